import FoundationEssentials
import SidecarModel

/// Reads a service definition (`PUT /v1/agent/service/register` body or a config-dir
/// `service` block; PascalCase or snake_case) into records, expanding
/// `connect.sidecar_service` into a second registration with Consul's defaults.
struct ServiceDefinition {
    var service: ServiceRecord
    var checks: [CheckRecord]
    var sidecar: (service: ServiceRecord, checks: [CheckRecord])?

    /// `sidecarPort` picks the auto-assigned port for a sidecar without one (given its ID).
    /// `tenancy`: the request's on a Consul Enterprise agent (the body's Namespace/Partition
    /// win), nil on CE, which knows no such fields.
    static func parse(_ body: Fields, tenancy requested: Tenancy?, sidecarPort: (String) -> Int?) throws -> ServiceDefinition {
        guard body.isObject else { throw HTTPError.badRequest("Request decode failed: expected a JSON object") }
        guard let name = try body.string("Name"), !name.isEmpty else { throw HTTPError.badRequest("Missing service name") }
        var service = try parseCommon(body, name: name, id: try body.string("ID").flatMap { $0.isEmpty ? nil : $0 } ?? name)
        service.tenancy = try body.tenancy(requested: requested)
        service.kind = try body.string("Kind") ?? ""
        guard service.kind == "" || service.kind == "connect-proxy" else {
            throw HTTPError.badRequest("Invalid service kind \"\(service.kind)\": the dev agent supports plain services and connect-proxy")
        }
        if service.kind == "connect-proxy" {
            let proxy = try parseProxy(body.field("Proxy"), defaults: ProxyRecord())
            guard !proxy.destinationServiceName.isEmpty else {
                throw HTTPError.badRequest("Invalid service: Proxy.DestinationServiceName must be set for a connect-proxy")
            }
            guard service.port > 0 || proxy.localServiceSocketPath != nil else {
                throw HTTPError.badRequest("Invalid service: Port must be set for a Connect proxy")
            }
            service.proxy = inheritTenancy(proxy, from: service.tenancy, enterprise: requested != nil)
        }
        let checks = try parseChecks(body, serviceID: service.id, serviceName: name)
        var definition = ServiceDefinition(service: service, checks: checks)

        if let connect = body.field("Connect") {
            definition.service.connectNative = try connect.bool("Native") ?? false
            if let sidecar = connect.field("SidecarService") {
                definition.sidecar = try parseSidecar(sidecar, parent: service, enterprise: requested != nil, sidecarPort: sidecarPort)
            }
        }
        return definition
    }

    /// Consul Enterprise fills an upstream's empty DestinationNamespace/Partition with the
    /// proxy's own; CE leaves them empty (and its answers omit them).
    private static func inheritTenancy(_ proxy: ProxyRecord, from tenancy: Tenancy, enterprise: Bool) -> ProxyRecord {
        guard enterprise else { return proxy }
        var proxy = proxy
        for index in proxy.upstreams.indices {
            if proxy.upstreams[index].destinationNamespace.isEmpty { proxy.upstreams[index].destinationNamespace = tenancy.namespace }
            if proxy.upstreams[index].destinationPartition.isEmpty { proxy.upstreams[index].destinationPartition = tenancy.partition }
        }
        return proxy
    }

    private static func parseCommon(_ body: Fields, name: String, id: String) throws -> ServiceRecord {
        var service = ServiceRecord(id: id, name: name)
        service.tags = try body.strings("Tags") ?? []
        service.meta = try body.map("Meta") ?? .emptyObject
        service.port = try body.int("Port") ?? 0
        service.address = try body.string("Address") ?? ""
        service.taggedAddresses = try body.map("TaggedAddresses") ?? .emptyObject
        service.enableTagOverride = try body.bool("EnableTagOverride") ?? false
        if let weights = body.field("Weights") {
            service.weights = (try weights.int("Passing") ?? 1, try weights.int("Warning") ?? 1)
        }
        guard (0...65535).contains(service.port) else { throw HTTPError.badRequest("Invalid service: port \(service.port) out of range") }
        return service
    }

    /// Consul's sidecar defaults: name/ID suffixed `-sidecar-proxy`, the parent's address,
    /// tags and meta, a port from 21000-21255, and a proxy pointing at the parent.
    private static func parseSidecar(_ body: Fields, parent: ServiceRecord, enterprise: Bool,
                                     sidecarPort: (String) -> Int?) throws -> (ServiceRecord, [CheckRecord]) {
        let name = try body.string("Name").flatMap { $0.isEmpty ? nil : $0 } ?? "\(parent.name)-sidecar-proxy"
        let id = try body.string("ID").flatMap { $0.isEmpty ? nil : $0 } ?? "\(parent.id)-sidecar-proxy"
        var sidecar = try parseCommon(body, name: name, id: id)
        sidecar.tenancy = parent.tenancy
        sidecar.kind = "connect-proxy"
        sidecar.sidecarParentID = parent.id
        if body.field("Address") == nil { sidecar.address = parent.address }
        if body.field("Tags") == nil { sidecar.tags = parent.tags }
        if body.field("Meta") == nil { sidecar.meta = parent.meta }
        if sidecar.port == 0 {
            guard let port = sidecarPort(id) else {
                throw HTTPError.badRequest("Invalid service: no free port in the sidecar range 21000-21255")
            }
            sidecar.port = port
        }
        var defaults = ProxyRecord()
        defaults.destinationServiceName = parent.name
        defaults.destinationServiceID = parent.id
        defaults.localServiceAddress = "127.0.0.1"
        defaults.localServicePort = parent.port
        sidecar.proxy = inheritTenancy(try parseProxy(body.field("Proxy"), defaults: defaults), from: parent.tenancy, enterprise: enterprise)
        var checks = try parseChecks(body, serviceID: id, serviceName: name)
        if checks.isEmpty {
            // Consul adds a TCP "listening" check and an alias of the parent; the alias (what
            // makes an unhealthy app drop out of health/connect) is the one emulated here.
            checks = [CheckRecord(id: "service:\(id):2", name: "Connect Sidecar Aliasing \(parent.id)", serviceID: id,
                                  serviceName: name, status: "passing", type: "alias", aliasServiceID: parent.id)]
        }
        return (sidecar, checks)
    }

    static func parseProxy(_ body: Fields?, defaults: ProxyRecord) throws -> ProxyRecord {
        var proxy = defaults
        guard let body else { return proxy }
        proxy.destinationServiceName = try body.string("DestinationServiceName") ?? proxy.destinationServiceName
        proxy.destinationServiceID = try body.string("DestinationServiceID") ?? proxy.destinationServiceID
        if proxy.destinationServiceID.isEmpty { proxy.destinationServiceID = proxy.destinationServiceName }
        proxy.localServiceAddress = try body.string("LocalServiceAddress") ?? proxy.localServiceAddress
        proxy.localServicePort = try body.int("LocalServicePort") ?? proxy.localServicePort
        proxy.localServiceSocketPath = try body.string("LocalServiceSocketPath") ?? proxy.localServiceSocketPath
        proxy.mode = try body.string("Mode") ?? ""
        proxy.config = try body.map("Config") ?? .emptyObject
        proxy.meshGateway = try body.map("MeshGateway") ?? .emptyObject
        proxy.expose = try body.map("Expose") ?? .emptyObject
        proxy.upstreams = try (body.array("Upstreams") ?? []).map(parseUpstream)
        return proxy
    }

    private static func parseUpstream(_ body: Fields) throws -> UpstreamRecord {
        guard let name = try body.string("DestinationName"), !name.isEmpty else {
            throw HTTPError.badRequest("Invalid service: \(body.path): upstream destination_name is required")
        }
        var upstream = UpstreamRecord(destinationName: name)
        upstream.destinationType = try body.string("DestinationType").flatMap { $0.isEmpty ? nil : $0 } ?? "service"
        upstream.destinationNamespace = try body.string("DestinationNamespace") ?? ""
        upstream.destinationPartition = try body.string("DestinationPartition") ?? ""
        upstream.datacenter = try body.string("Datacenter") ?? ""
        upstream.destinationPeer = try body.string("DestinationPeer") ?? ""
        upstream.localBindAddress = try body.string("LocalBindAddress") ?? ""
        upstream.localBindPort = try body.int("LocalBindPort") ?? 0
        upstream.localBindSocketPath = try body.string("LocalBindSocketPath")
        upstream.config = try body.map("Config") ?? .emptyObject
        return upstream
    }

    /// `Check` and `Checks`; IDs default to `service:<id>` (one check) or `service:<id>:N`.
    static func parseChecks(_ body: Fields, serviceID: String, serviceName: String) throws -> [CheckRecord] {
        var definitions: [Fields] = []
        if let check = body.field("Check") { definitions.append(check) }
        definitions += try body.array("Checks") ?? []
        return try definitions.enumerated().map { offset, definition in
            let defaultID = definitions.count == 1 ? "service:\(serviceID)" : "service:\(serviceID):\(offset + 1)"
            let id = try definition.string("CheckID").flatMap { $0.isEmpty ? nil : $0 }
                ?? definition.string("ID").flatMap { $0.isEmpty ? nil : $0 } ?? defaultID
            var check = CheckRecord(id: id, name: try definition.string("Name").flatMap { $0.isEmpty ? nil : $0 }
                                        ?? "Service '\(serviceName)' check",
                                    serviceID: serviceID, serviceName: serviceName, status: "critical")
            check.notes = try definition.string("Notes") ?? ""
            if let ttlText = try definition.string("TTL") {
                guard let nanoseconds = ConfigDuration.parse(ttlText) else {
                    throw HTTPError.badRequest("Invalid check: TTL \"\(ttlText)\" is not a duration")
                }
                check.ttl = Double(nanoseconds) / 1e9
                check.type = "ttl"
            } else {
                // HTTP/TCP/script checks are not executed by the dev agent: they count as passing.
                check.status = "passing"
                check.output = "not executed by the dev agent"
            }
            if let status = try definition.string("Status") {
                guard CheckStatus.all.contains(status) else { throw HTTPError.badRequest("Invalid check status: \"\(status)\"") }
                check.status = status
                check.statusGiven = true
            }
            return check
        }
    }
}
