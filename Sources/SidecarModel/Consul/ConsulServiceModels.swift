import FoundationEssentials

// Decoders for Consul's service-related responses: the proxy's own registration, the healthy
// instances of an upstream, and the intentions for our destination. Rules as in
// ConsulAPIModels.swift.

// MARK: - GET /v1/agent/service/:id

/// `GET /v1/agent/service/:id` (hash-blocking) for our connect-proxy registration.
package struct ConsulAgentService: Equatable, Sendable {
    /// Always "connect-proxy": other kinds are refused.
    var kind: String
    package var id: String
    /// The service name (the API's "Service" field; "Name" only exists in definitions).
    package var service: String
    /// The hash to send back as `?hash=` (the same value as the X-Consul-ContentHash header).
    var contentHash: String?
    /// The registration read by the same rules as a service definition file.
    package var proxy: ProxyDefinition
    /// The agent's datacenter (`omitempty`; absent from agents before 1.10).
    package var datacenter: String?

    init(kind: String, id: String, service: String, contentHash: String?, proxy: ProxyDefinition, datacenter: String? = nil) {
        self.kind = kind
        self.id = id
        self.service = service
        self.contentHash = contentHash
        self.proxy = proxy
        self.datacenter = datacenter
    }

    package static func decode(_ data: Data, source: String) throws -> ConsulAgentService {
        let root = try ConsulResponseBody.root(data, source: source)
        let kind = try root.optionalString("Kind") ?? ""
        let id = try root.requiredNonEmptyString("ID")
        let service = try root.requiredNonEmptyString("Service")
        guard kind == "connect-proxy" else {
            let shown = kind.isEmpty ? "a plain service (no Kind)" : "kind \"\(kind)\""
            throw root.error("service \"\(id)\" is \(shown), not a connect-proxy registration", at: "Kind")
        }
        return ConsulAgentService(
            kind: kind,
            id: id,
            service: service,
            contentHash: try root.optionalNonEmptyString("ContentHash"),
            proxy: try ProxyDefinition.decode(service: root),
            datacenter: try root.optionalNonEmptyString("Datacenter")
        )
    }
}

// MARK: - GET /v1/health/connect/:service

/// One entry of `GET /v1/health/connect/:service?passing=1` (index-blocking): a proxy (or
/// connect-native instance) in front of the service we want to reach.
package struct ConsulServiceInstance: Equatable, Sendable {
    package struct Node: Equatable, Sendable {
        /// Node UUID; "" for nodes registered without one.
        package var id: String
        /// Node name.
        package var node: String
        var address: String
        /// The `dc` segment of the identity the instance must present.
        package var datacenter: String
        /// `TaggedAddresses.wan`: the node's address as other datacenters reach it.
        var wanAddress: String?

        init(id: String = "", node: String, address: String, datacenter: String, wanAddress: String? = nil) {
            self.id = id
            self.node = node
            self.address = address
            self.datacenter = datacenter
            self.wanAddress = wanAddress
        }
    }

    package struct Service: Equatable, Sendable {
        package var id: String
        /// The registered name (for a sidecar: `<dest>-sidecar-proxy`).
        package var service: String
        /// "connect-proxy" for sidecars, "" for connect-native services.
        var kind: String
        /// Often "": the instance listens on the node's address.
        var address: String
        package var port: Int
        /// `Proxy.DestinationServiceName` when non-empty (sidecars only).
        var proxyDestinationName: String?
        /// `TaggedAddresses.wan` (address, and port when not 0).
        var wanAddress: String?
        var wanPort: Int?

        init(id: String, service: String, kind: String = "", address: String = "", port: Int,
                    proxyDestinationName: String? = nil, wanAddress: String? = nil, wanPort: Int? = nil) {
            self.id = id
            self.service = service
            self.kind = kind
            self.address = address
            self.port = port
            self.proxyDestinationName = proxyDestinationName
            self.wanAddress = wanAddress
            self.wanPort = wanPort
        }
    }

    package struct Check: Equatable, Sendable {
        var checkID: String
        /// "passing", "warning", "critical" or "maintenance".
        var status: String

        init(checkID: String, status: String) {
            self.checkID = checkID
            self.status = status
        }
    }

    package var node: Node
    package var service: Service
    var checks: [Check]

    init(node: Node, service: Service, checks: [Check]) {
        self.node = node
        self.service = service
        self.checks = checks
    }

    /// Where to connect: the service address, or the node's when the service has none
    /// (registrations without an address are common; see Consul issue #7505). Dial it with
    /// `service.port`.
    var dialAddress: String { service.address.isEmpty ? node.address : service.address }

    /// Where to connect, as Consul's CheckServiceNode.BestAddress: from another datacenter
    /// (`wan`) the service's WAN tagged address (and port), else its address, else the node's
    /// WAN tagged address, else the node's address; locally the service's address, else the
    /// node's.
    package func bestAddress(wan: Bool) -> (host: String, port: Int) {
        var host = service.address
        var port = service.port
        if wan, let address = service.wanAddress {
            host = address
            if let wanPort = service.wanPort { port = wanPort }
        }
        if host.isEmpty { host = wan ? (node.wanAddress ?? node.address) : node.address }
        return (host, port)
    }

    /// Every check passing (an instance without checks counts as passing, as in Consul's own
    /// `?passing` filter). `?passing=1` already filters server-side; this re-checks locally.
    package var isPassing: Bool { checks.allSatisfy { $0.status == "passing" } }

    /// Every entry, or the first problem (strict: for tests and one-shot reads).
    package static func decode(_ data: Data, source: String) throws -> [ConsulServiceInstance] {
        let root = try ConsulResponseBody.root(data, source: source)
        return try root.array().map(decodeEntry)
    }

    /// The entries that can be dialled, and a line for each that cannot (an instance on a
    /// unix socket has no `Port`; one odd entry must not take the others away). Only an
    /// answer that is not a list at all is an error.
    package static func decodeUsable(_ data: Data, source: String) throws -> (instances: [ConsulServiceInstance], skipped: [String]) {
        let root = try ConsulResponseBody.root(data, source: source)
        var instances: [ConsulServiceInstance] = []
        var skipped: [String] = []
        for entry in try root.array() {
            do {
                instances.append(try decodeEntry(entry))
            } catch let error as ConfigError {
                skipped.append("\(error.path): \(error.message)")
            }
        }
        return (instances, skipped)
    }

    private static func decodeEntry(_ entry: ConfigNode) throws -> ConsulServiceInstance {
        _ = try entry.object()
        let nodeNode = try entry.require("Node")
        _ = try nodeNode.object()
        let serviceNode = try entry.require("Service")
        _ = try serviceNode.object()
        // `omitempty`: an instance registered with a socket path has no port to dial.
        guard let portNode = try serviceNode.field("Port") else {
            throw serviceNode.error("no port (an instance on a unix socket cannot be dialled from another host)", at: "Port")
        }
        let port = try portNode.integer()
        guard (1...65535).contains(port) else { throw portNode.error("port \(port) is outside 1-65535") }
        let serviceWAN = try serviceNode.field("TaggedAddresses")?.field("wan")
        let wanPort = try serviceWAN?.field("Port")?.integer()
        guard wanPort.map({ (0...65535).contains($0) }) ?? true else {
            throw serviceNode.error("port \(wanPort ?? 0) is outside 0-65535", at: "TaggedAddresses.wan.Port")
        }
        return ConsulServiceInstance(
            node: Node(
                id: try nodeNode.optionalString("ID") ?? "",
                node: try nodeNode.requiredNonEmptyString("Node"),
                address: try nodeNode.require("Address").string(),
                datacenter: try nodeNode.requiredNonEmptyString("Datacenter"),
                wanAddress: try nodeNode.field("TaggedAddresses")?.optionalNonEmptyString("wan")
            ),
            service: Service(
                id: try serviceNode.requiredNonEmptyString("ID"),
                service: try serviceNode.requiredNonEmptyString("Service"),
                kind: try serviceNode.optionalString("Kind") ?? "",
                address: try serviceNode.optionalString("Address") ?? "",
                port: port,
                proxyDestinationName: try serviceNode.field("Proxy")?.optionalNonEmptyString("DestinationServiceName"),
                wanAddress: try serviceWAN?.optionalNonEmptyString("Address"),
                wanPort: wanPort.flatMap { $0 == 0 ? nil : $0 }
            ),
            checks: try entry.field("Checks")?.array().map { check in
                _ = try check.object()
                return Check(checkID: try check.requiredNonEmptyString("CheckID"), status: try check.requiredNonEmptyString("Status"))
            } ?? []
        )
    }
}

// MARK: - GET /v1/connect/intentions/match

/// `GET /v1/connect/intentions/match?by=destination&name=X` (index-blocking): for each
/// requested name, the intentions that apply to it, highest precedence first.
package struct ConsulIntentionMatch: Equatable, Sendable {
    /// Keyed by the names as requested (Consul preserves their spelling).
    package var intentionsByName: [String: [Intention]]

    init(intentionsByName: [String: [Intention]]) {
        self.intentionsByName = intentionsByName
    }

    /// The intentions for `name` (exact key), nil when the response has no entry for it.
    package func intentions(for name: String) -> [Intention]? { intentionsByName[name] }

    package static func decode(_ data: Data, source: String) throws -> ConsulIntentionMatch {
        let root = try ConsulResponseBody.root(data, source: source)
        var result: [String: [Intention]] = [:]
        // Keys are service names, compared exactly: ConfigNode's relaxed field matching would
        // conflate "backup-db" and "backupdb".
        for (name, value) in try root.object().sorted(by: { $0.key < $1.key }) {
            let list = ConfigNode(value: value, path: name, source: source)
            // Consul answers `null` for a name with no intentions.
            result[name] = value == .null ? [] : try list.array().map(decodeIntention)
        }
        return ConsulIntentionMatch(intentionsByName: result)
    }

    /// The intentions for `destination`; a response without that key is an error (we asked
    /// for it, so its absence means the answer is not for us).
    package static func decode(_ data: Data, source: String, destination: String) throws -> [Intention] {
        let match = try decode(data, source: source)
        guard let intentions = match.intentions(for: destination) else {
            let found = match.intentionsByName.keys.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
            throw ConfigError(source: source, path: "",
                              message: "no entry for \"\(destination)\" (found: \(found.isEmpty ? "none" : found))")
        }
        return intentions
    }

    /// One Consul `Intention`. L7 intentions come with `"Action": ""` and `Permissions`;
    /// namespaces and partitions default to "default" when missing or empty.
    static func decodeIntention(_ node: ConfigNode) throws -> Intention {
        _ = try node.object()
        let action = try node.optionalNonEmptyString("Action").map { text -> IntentionAction in
            guard let action = IntentionAction(rawValue: text.lowercased()) else {
                throw node.error("action \"\(text)\" is not \"allow\" or \"deny\"", at: "Action")
            }
            return action
        }
        let permissions = try node.field("Permissions")?.array().map(IntentionsFile.decodePermission) ?? []
        switch (action, permissions.isEmpty) {
        case (nil, true): throw node.error("an intention needs either Action or Permissions")
        case (.some, false): throw node.error("an intention has either Action or Permissions, not both")
        default: break
        }
        var intention = Intention(
            destinationName: try node.requiredNonEmptyString("DestinationName"),
            destinationNamespace: try node.optionalNonEmptyString("DestinationNS") ?? "default",
            sourceName: try node.requiredNonEmptyString("SourceName"),
            sourceNamespace: try node.optionalNonEmptyString("SourceNS") ?? "default",
            sourcePartition: try node.optionalNonEmptyString("SourcePartition") ?? "default",
            sourcePeer: try node.optionalString("SourcePeer") ?? "",
            action: action,
            permissions: permissions,
            description: try node.optionalString("Description") ?? ""
        )
        // Conditions that narrow and that we cannot evaluate are kept, to decide deny: the
        // entry's JWT (Consul copies it onto each of the entry's intentions) and a sameness group.
        intention.destinationPartition = try node.optionalNonEmptyString("DestinationPartition") ?? "default"
        intention.requiresJWT = try IntentionsFile.requiresJWT(node)
        intention.sourceSamenessGroup = try node.optionalNonEmptyString("SourceSamenessGroup") ?? ""
        return intention
    }

}
