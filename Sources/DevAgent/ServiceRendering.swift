import FoundationEssentials
import SidecarModel
import SidecarTLS

/// Consul's response shapes for services and checks.
struct ServiceRendering {
    let datacenter: String
    let nodeName: String
    let nodeID: String
    /// Consul Enterprise names every object's Namespace and Partition; CE's answers have none.
    var enterprise = false

    /// Consul's `api.AgentService`; `Kind` is omitted for plain services as Go's omitempty does.
    func agentService(_ service: ServiceRecord, contentHash: Bool = false, indexes: Bool = false) -> JSON {
        var fields: [(String, JSON)] = []
        if !service.kind.isEmpty { fields.append(("Kind", .string(service.kind))) }
        fields += [
            ("ID", .string(service.id)),
            ("Service", .string(service.name)),
            ("Tags", .array(service.tags.map(JSON.string))),
            ("Meta", JSON(service.meta)),
            ("Port", .int(service.port)),
            ("Address", .string(service.address)),
            ("TaggedAddresses", JSON(service.taggedAddresses)),
            ("Weights", .object([("Passing", .int(service.weights.passing)), ("Warning", .int(service.weights.warning))])),
            ("EnableTagOverride", .bool(service.enableTagOverride)),
        ]
        if let proxy = service.proxy { fields.append(("Proxy", self.proxy(proxy))) }
        if service.connectNative { fields.append(("Connect", .object([("Native", .bool(true))]))) }
        if indexes {
            fields += [("CreateIndex", .uint(service.createIndex)), ("ModifyIndex", .uint(service.modifyIndex))]
        }
        fields.append(("Datacenter", .string(datacenter)))
        fields += service.tenancy.answerFields(enterprise: enterprise)
        if contentHash { fields.append(("ContentHash", .string(Self.contentHash(of: service)))) }
        return .object(fields)
    }

    /// Consul's `api.AgentServiceConnectProxyConfig`: every field `omitempty` except the two
    /// structs (MeshGateway, Expose), which Go always sends.
    func proxy(_ proxy: ProxyRecord) -> JSON {
        var fields: [(String, JSON)] = []
        func add(_ name: String, _ value: JSON, if present: Bool) { if present { fields.append((name, value)) } }
        add("DestinationServiceName", .string(proxy.destinationServiceName), if: !proxy.destinationServiceName.isEmpty)
        add("DestinationServiceID", .string(proxy.destinationServiceID), if: !proxy.destinationServiceID.isEmpty)
        add("LocalServiceAddress", .string(proxy.localServiceAddress), if: !proxy.localServiceAddress.isEmpty)
        add("LocalServicePort", .int(proxy.localServicePort), if: proxy.localServicePort != 0)
        add("LocalServiceSocketPath", .string(proxy.localServiceSocketPath ?? ""), if: proxy.localServiceSocketPath != nil)
        add("Mode", .string(proxy.mode), if: !proxy.mode.isEmpty)
        add("Config", JSON(proxy.config), if: proxy.config != .emptyObject)
        add("Upstreams", .array(proxy.upstreams.map(upstream)), if: !proxy.upstreams.isEmpty)
        fields += [("MeshGateway", JSON(proxy.meshGateway)), ("Expose", JSON(proxy.expose))]
        return .object(fields)
    }

    private func upstream(_ upstream: UpstreamRecord) -> JSON {
        var fields: [(String, JSON)] = [("DestinationType", .string(upstream.destinationType))]
        // omitempty, as Consul: CE leaves the tenancy out; transparent-proxy and peered
        // upstreams often have no local bind.
        if !upstream.destinationNamespace.isEmpty { fields.append(("DestinationNamespace", .string(upstream.destinationNamespace))) }
        if !upstream.destinationPartition.isEmpty { fields.append(("DestinationPartition", .string(upstream.destinationPartition))) }
        if !upstream.destinationPeer.isEmpty { fields.append(("DestinationPeer", .string(upstream.destinationPeer))) }
        // `api.Upstream`: omitempty but for DestinationName and the MeshGateway struct.
        fields.append(("DestinationName", .string(upstream.destinationName)))
        if !upstream.datacenter.isEmpty { fields.append(("Datacenter", .string(upstream.datacenter))) }
        if !upstream.localBindAddress.isEmpty { fields.append(("LocalBindAddress", .string(upstream.localBindAddress))) }
        if upstream.localBindPort != 0 { fields.append(("LocalBindPort", .int(upstream.localBindPort))) }
        if let path = upstream.localBindSocketPath { fields.append(("LocalBindSocketPath", .string(path))) }
        if upstream.config != .emptyObject { fields.append(("Config", JSON(upstream.config))) }
        fields.append(("MeshGateway", .object([])))
        return .object(fields)
    }

    /// A hash of what was registered (not of indexes), hex like Consul's 16-digit hash:
    /// any change a proxy must react to (upstreams, ports, config) changes it.
    static func contentHash(of service: ServiceRecord) -> String {
        let rendering = ServiceRendering(datacenter: "", nodeName: "", nodeID: "")
        let text = rendering.agentService(service).serialized()
        return Format.hex(Digest.sha256(Array(text.utf8)).prefix(8))
    }

    func check(_ check: CheckRecord, status: String, state: AgentState? = nil) -> JSON {
        .object([
            ("Node", .string(nodeName)),
            ("CheckID", .string(check.id)),
            ("Name", .string(check.name)),
            ("Status", .string(status)),
            ("Notes", .string(check.notes)),
            ("Output", .string(check.output)),
            ("ServiceID", .string(check.serviceID)),
            ("ServiceName", .string(check.serviceName)),
            ("ServiceTags", .array([])),
            ("Type", .string(check.type)),
            ("Interval", .string("")),
            ("Timeout", .string("")),
            ("ExposedPort", .int(0)),
            ("Definition", .object([])),
        ] + (state?.services[check.serviceID]?.tenancy ?? .default).answerFields(enterprise: enterprise) + [
            ("CreateIndex", .uint(check.createIndex)),
            ("ModifyIndex", .uint(check.modifyIndex)),
        ])
    }


    func node(index: UInt64) -> JSON {
        .object([
            ("ID", .string(nodeID)),
            ("Node", .string(nodeName)),
            ("Address", .string("127.0.0.1")),
            ("Datacenter", .string(datacenter)),
            ("TaggedAddresses", .object([("lan", .string("127.0.0.1")), ("wan", .string("127.0.0.1"))])),
            ("Meta", .object([("consul-network-segment", .string(""))])),
            ("CreateIndex", .int(1)),
            ("ModifyIndex", .int(1)),
        ])
    }

    /// `/v1/health/service/:name` and `/v1/health/connect/:name` entries.
    func healthEntries(_ state: AgentState, connect: Bool, name: String, tenancy: Tenancy, passingOnly: Bool) -> JSON {
        let matching = state.services.values.filter { service in
            service.tenancy == tenancy && (connect
                ? (service.kind == "connect-proxy" && service.proxy?.destinationServiceName == name)
                    || (service.connectNative && service.name == name)
                : service.name == name)
        }.sorted { $0.id < $1.id }
        let entries = matching.compactMap { service -> JSON? in
            let checks = state.checks(ofService: service.id).map { ($0, state.status(of: $0)) }
            if passingOnly && !checks.allSatisfy({ $0.1 == "passing" }) { return nil }
            return .object([
                ("Node", node(index: 1)),
                ("Service", agentService(service, indexes: true)),
                ("Checks", .array(checks.map { check($0.0, status: $0.1, state: state) })),
            ])
        }
        return .array(entries)
    }
}
