import FoundationEssentials

package struct Upstream: Equatable, Sendable {
    package var destinationName: String
    /// The upstream's own DestinationNamespace/Partition, else the proxy's (as Consul).
    package var tenancy: Tenancy
    package var destinationNamespace: String { tenancy.namespace }
    package var destinationPartition: String { tenancy.partition }
    /// nil: the proxy's own datacenter.
    package var datacenter: String?
    package var localBindAddress: String
    package var localBindPort: Int
    package var connectTimeoutMs: Int
    /// Listen on this unix socket instead of TCP (Consul's LocalBindSocketPath).
    package var localBindSocketPath: String? = nil
    /// Permission bits for the socket file (Consul's LocalBindSocketMode, octal text).
    package var localBindSocketMode: UInt16? = nil
    /// Callers allowed to use this upstream (numbers or names); empty lists: anyone local.
    package var allowedUsers: [String] = []
    package var allowedGroups: [String] = []

    /// The name of this upstream's listener in logs, audit lines, metrics and the admin API
    /// (`upstream:NAME`, or `upstream:NAME@DC` for an upstream pinned to a datacenter).
    package var listenerName: String { "upstream:\(instanceKey)" }

    /// Whose instances this upstream dials: the same name in two datacenters, namespaces or
    /// partitions is two services with two instance lists (`[partition/][namespace/]name[@dc]`,
    /// non-default parts only; peers are refused when decoding).
    package var instanceKey: String {
        var key = destinationName
        if tenancy != .default { key = "\(tenancy)/\(key)" }
        return datacenter.map { "\(key)@\($0)" } ?? key
    }

    /// Listener identity: a change of any of these means a new listener.
    package var listenerKey: String { localBindSocketPath.map { "unix:\($0)" } ?? "\(localBindAddress):\(localBindPort)" }

    /// An upstream listener lends our mesh identity to whoever connects, so by default it may
    /// only listen on loopback (127.0.0.0/8, ::1, localhost).
    var bindsLoopbackOnly: Bool {
        if localBindSocketPath != nil { return true }
        let address = localBindAddress.lowercased()
        if address == "localhost" || address == "::1" || address == "[::1]" { return true }
        let octets = address.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }
}

extension ProxyDefinition {
    /// The registration's upstreams: those this sidecar serves, and a line for each it skips.
    /// Skipped, never fatal for the rest: an upstream with no local bind (transparent proxy or
    /// central config), a peered or prepared-query destination (served as a same-named local
    /// service, it would be misrouted), one that does not decode, or a second upstream on a
    /// bind already taken.
    static func decodeUpstreams(_ node: ConfigNode?, proxyTenancy: Tenancy?) throws -> (served: [Upstream], skipped: [String]) {
        guard let node else { return ([], []) }
        var served: [Upstream] = []
        var skipped: [String] = []
        var seen: [String: String] = [:]
        for (index, item) in try node.array().enumerated() {
            let label = (try? item.optionalNonEmptyString("destination_name")).flatMap { $0 }.map { "upstream \"\($0)\"" }
                ?? "upstreams[\(index)]"
            do {
                let upstream = try decodeUpstream(item, proxyTenancy: proxyTenancy)
                if let other = seen[upstream.listenerKey] {
                    throw item.error("local bind \(upstream.listenerKey) is already used by upstream \"\(other)\"", at: "local_bind_port")
                }
                seen[upstream.listenerKey] = upstream.destinationName
                served.append(upstream)
            } catch let error as ConfigError {
                skipped.append("\(label) skipped: \(error.path.isEmpty ? "" : "\(error.path): ")\(error.message)")
            }
        }
        return (served, skipped)
    }

    private static func decodeUpstream(_ item: ConfigNode, proxyTenancy: Tenancy?) throws -> Upstream {
        if let type = try item.optionalString("destination_type"), !type.isEmpty, type != "service" {
            throw item.error("destination_type \"\(type)\" is not supported; only \"service\"", at: "destination_type")
        }
        let name = try item.requiredNonEmptyString("destination_name")
        if let peer = try item.optionalNonEmptyString("destination_peer") {
            throw item.error("cluster peering (peer \"\(peer)\") is not supported; refused rather than dialling a local \"\(name)\"",
                             at: "destination_peer")
        }
        let namespace = try item.optionalNonEmptyString("destination_namespace")
        let partition = try item.optionalNonEmptyString("destination_partition")
        try Tenancy.validate(namespace, field: "destination_namespace", in: item)
        try Tenancy.validate(partition, field: "destination_partition", in: item)
        let tenancy = Tenancy(namespace: namespace ?? proxyTenancy?.namespace ?? "default",
                              partition: partition ?? proxyTenancy?.partition ?? "default")
        // A registration from Consul CE states no tenancy; CE has no other namespace to ask in.
        if proxyTenancy == nil {
            for (field, value) in [("destination_namespace", namespace), ("destination_partition", partition)] {
                if let value, value != "default" {
                    throw item.error("\"\(value)\" needs Consul Enterprise, and the registration states no namespace or partition; refused rather than dialling \"\(name)\" in default",
                                     at: field)
                }
            }
        }
        let socketPath = try item.optionalNonEmptyString("local_bind_socket_path")
        // Go's zero value: Consul sends no LocalBindPort (omitempty) or 0 for "none".
        let bindPort = try item.field("local_bind_port").flatMap { $0.value == .integer(0) ? nil : $0 }
        guard socketPath != nil || bindPort != nil else {
            throw item.error("no local_bind_port or local_bind_socket_path (a transparent-proxy or centrally configured upstream): no listener for it",
                             at: "local_bind_port")
        }
        let config = try item.field("config")?.asOpaqueMap()
        var upstream = Upstream(
            destinationName: name,
            tenancy: tenancy,
            datacenter: try item.optionalNonEmptyString("datacenter"),
            localBindAddress: try item.optionalNonEmptyString("local_bind_address") ?? "127.0.0.1",
            localBindPort: try socketPath == nil ? bindPort?.port() ?? 0 : 0,
            connectTimeoutMs: try config?.field("connect_timeout_ms").map(positive) ?? 10000
        )
        if let socketPath {
            guard socketPath.hasPrefix("/") else { throw item.error("must be an absolute path", at: "local_bind_socket_path") }
            upstream.localBindSocketPath = socketPath
            if let mode = try item.optionalString("local_bind_socket_mode") {
                guard let bits = UInt16(mode, radix: 8), bits <= 0o777 else {
                    throw item.error("\"\(mode)\" is not an octal file mode such as \"0660\"", at: "local_bind_socket_mode")
                }
                upstream.localBindSocketMode = bits
            }
        }
        upstream.allowedUsers = try config.map { try callerList($0, "allowed_uids") } ?? []
        upstream.allowedGroups = try config.map { try callerList($0, "allowed_gids") } ?? []
        return upstream
    }

    /// `allowed_uids` / `allowed_gids`: numbers or names (resolved when the listener starts).
    private static func callerList(_ config: ConfigNode, _ name: String) throws -> [String] {
        guard let list = try config.field(name) else { return [] }
        return try list.array().map { item in
            switch item.value {
            case .integer(let number) where number >= 0 && number <= Int64(UInt32.max): return String(number)
            case .string(let text) where !text.isEmpty: return text
            default: throw item.error("expected a user or group name or number")
            }
        }
    }
}
