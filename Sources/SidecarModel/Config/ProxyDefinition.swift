import FoundationEssentials

/// What a `connect-proxy` registration says about the sidecar we run. Built from a service
/// definition file or (later) from `/v1/agent/service/:id`; no I/O here.
package struct ProxyDefinition: Equatable, Sendable {
    package var id: String
    package var name: String
    /// Public listener address; Consul's built-in proxy defaults to all interfaces.
    var address: String
    package var port: Int?
    package var destinationServiceName: String
    var destinationServiceID: String?
    package var localServiceAddress: String
    package var localServicePort: Int?
    /// The local app listens on a unix socket instead of a TCP port.
    package var localServiceSocketPath: String? = nil
    package var config: ProxyConfig
    package var upstreams: [Upstream]
    /// Upstreams in the registration that get no listener, each with why (logged as a
    /// warning): one upstream this sidecar cannot serve must not take the others down.
    package var skippedUpstreams: [String] = []
    /// Consul Enterprise tenancy of the registration (nil: not stated, as Consul CE answers).
    /// Upstreams without their own inherit it, as Consul does.
    package var tenancy: Tenancy? = nil

    /// Where the public (inbound) listener binds: proxy config overrides the registration.
    package var publicBindAddress: String { config.bindAddress ?? address }
    package var publicBindPort: Int? { config.bindPort ?? port }
    /// "host:port" of the public listener, or nil when the registration wants none: no port,
    /// or no local service to forward to.
    package var publicListenerAddress: String? {
        let hasTarget = localServicePort != nil || localServiceSocketPath != nil
        return publicBindPort.flatMap { hasTarget ? "\(publicBindAddress):\($0)" : nil }
    }
}

/// Keys we honour in `proxy.config` (the map Consul passes through to proxies).
package struct ProxyConfig: Equatable, Sendable {
    var bindAddress: String?
    package var bindPort: Int?
    package var localConnectTimeoutMs: Int = 1000
    package var handshakeTimeoutMs: Int = 10000
    /// "tcp" (default), "http", "http2", "grpc": decides L4 vs L7 enforcement.
    package var `protocol`: String = "tcp"
    /// Inbound connections older than this are cut (nil: no limit). Nanoseconds.
    package var maxConnectionLifetimeNs: Int64?
    /// Send a PROXY protocol v2 header (peer address, SPIFFE ID) to the local service.
    package var proxyProtocol = false
    /// Established connections (and mux streams) per listener before accepting pauses.
    package var maxConnections: Int = 4096
    /// Public listener: connections still in their TLS handshake; past it the oldest is closed.
    package var maxPendingHandshakes: Int = 256
    /// Public listener: a connection that sends nothing for this long is closed.
    package var firstByteTimeoutMs: Int = 5000
    /// Connections with no byte in either direction for this long are closed. Backups can
    /// sit quiet while the agent reads a slow disk, hence a generous default. Nanoseconds.
    package var idleTimeoutNs: Int64? = 3600 * 1_000_000_000
    /// Multiplexed transport: streams per pooled connection (both directions).
    package var muxMaxStreams: Int = 100
    /// Multiplexed transport: a connection silent this long is sent a PING, and closed as dead
    /// if it stays silent as long again. Nanoseconds.
    package var muxKeepaliveNs: Int64 = 30 * 1_000_000_000
    /// L7: how request paths are normalised (`merge_slashes`, `path_with_escaped_slashes_action`).
    package var pathNormalization = PathNormalization()
    /// L7: header names with `_` (`headers_with_underscores_action`).
    package var underscoreHeaders = UnderscoreHeaders.allow
}

extension ProxyDefinition {
    /// Refuses upstream listeners on non-loopback addresses unless explicitly allowed.
    package func validateUpstreamBinds(allowNonLoopback: Bool) throws {
        guard !allowNonLoopback else { return }
        for (index, upstream) in upstreams.enumerated() where !upstream.bindsLoopbackOnly {
            throw ConfigError(source: "upstreams[\(index)]", path: "local_bind_address",
                              message: "upstream \"\(upstream.destinationName)\" would listen on \(upstream.localBindAddress), which is not loopback: any host that can reach it would use this sidecar's identity. Use 127.0.0.1, or pass --allow-remote-upstreams")
        }
    }
}

extension ProxyDefinition {
    /// Reads a service definition file in any of the shapes Consul accepts:
    /// `{"service": {...}}` (agent config file), a bare registration object (HTTP API, PascalCase),
    /// either one being a `connect-proxy` or an application service with
    /// `connect.sidecar_service` (we then derive the sidecar the way Consul does).
    package static func load(path: String) throws -> ProxyDefinition {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(source: path, path: "", message: "cannot read file")
        }
        return try decode(data, source: path)
    }

    package static func decode(_ data: Data, source: String) throws -> ProxyDefinition {
        let root = ConfigNode(value: try JSONValue.parse(data, source: source), path: "", source: source)
        _ = try root.object()
        if let services = try root.field("services") {
            let list = try services.array()
            guard list.count == 1 else {
                throw services.error("expected exactly one service definition, found \(list.count)")
            }
            return try decode(service: list[0])
        }
        // `{"service": {...}}` wraps a definition. A bare registration (HTTP API shape) has its
        // own "Kind"/"Proxy"/"Connect" fields, and there "Service" is the service name.
        let isBareRegistration = try root.field("kind") != nil || root.field("proxy") != nil || root.field("connect") != nil
        if !isBareRegistration, let wrapped = try root.field("service") {
            _ = try wrapped.object()
            return try decode(service: wrapped)
        }
        return try decode(service: root)
    }

    static func decode(service node: ConfigNode) throws -> ProxyDefinition {
        let kind = try node.optionalString("kind") ?? ""
        switch kind {
        case "connect-proxy":
            return try decodeProxyRegistration(node)
        case "":
            guard let connect = try node.field("connect"), let sidecar = try connect.field("sidecar_service") else {
                throw node.error("not a connect-proxy registration (kind is missing) and no connect.sidecar_service block")
            }
            return try decodeSidecarService(sidecar, parent: node)
        default:
            throw node.error("kind \"\(kind)\" is not supported; expected \"connect-proxy\"", at: "kind")
        }
    }

    private static func decodeProxyRegistration(_ node: ConfigNode) throws -> ProxyDefinition {
        // Definitions say "name"; the agent API answers with the name in "Service" (a string
        // there, and authoritative when present).
        let name: String
        if let service = try node.field("service"), case .string(let value) = service.value {
            name = value
        } else if let named = try node.field("name") {
            name = try named.string()
        } else {
            throw node.error("required field is missing", at: "name")
        }
        let proxy = try node.require("proxy")
        let destination = try proxy.requiredNonEmptyString("destination_service_name")
        let tenancy = try Tenancy.decode(node)
        let upstreams = try decodeUpstreams(proxy.field("upstreams"), proxyTenancy: tenancy)
        var definition = ProxyDefinition(
            id: try node.optionalString("id") ?? name,
            name: name,
            address: try node.optionalNonEmptyString("address") ?? "0.0.0.0",
            port: try node.field("port")?.port(),
            destinationServiceName: destination,
            destinationServiceID: try proxy.optionalString("destination_service_id"),
            localServiceAddress: try proxy.optionalNonEmptyString("local_service_address")
                ?? "127.0.0.1",
            localServicePort: try proxy.field("local_service_port")?.port(),
            localServiceSocketPath: try proxy.optionalNonEmptyString("local_service_socket_path"),
            config: try decodeConfig(proxy.field("config")),
            upstreams: upstreams.served,
            skippedUpstreams: upstreams.skipped
        )
        definition.tenancy = tenancy
        return definition
    }

    /// Consul's defaults for `connect { sidecar_service {} }`: name `<svc>-sidecar-proxy`,
    /// local service = the parent's port on 127.0.0.1.
    private static func decodeSidecarService(_ sidecar: ConfigNode, parent: ConfigNode) throws -> ProxyDefinition {
        let parentName = try parent.require("name").string()
        let parentID = try parent.optionalString("id") ?? parentName
        let proxy = try sidecar.field("proxy")
        let name = try sidecar.optionalString("name") ?? "\(parentName)-sidecar-proxy"
        let tenancy = try Tenancy.decode(parent)
        let upstreams = try decodeUpstreams(proxy?.field("upstreams"), proxyTenancy: tenancy)
        var definition = ProxyDefinition(
            id: try sidecar.optionalString("id") ?? "\(parentID)-sidecar-proxy",
            name: name,
            address: try sidecar.optionalNonEmptyString("address") ?? "0.0.0.0",
            port: try sidecar.field("port")?.port(),
            destinationServiceName: parentName,
            destinationServiceID: parentID,
            localServiceAddress: try proxy?.optionalNonEmptyString("local_service_address")
                ?? "127.0.0.1",
            localServicePort: try proxy?.field("local_service_port")?.port() ?? parent.field("port")?.port(),
            config: try decodeConfig(proxy?.field("config")),
            upstreams: upstreams.served,
            skippedUpstreams: upstreams.skipped
        )
        definition.tenancy = tenancy
        return definition
    }

    private static func decodeConfig(_ node: ConfigNode?) throws -> ProxyConfig {
        var config = ProxyConfig()
        // An opaque map (Consul passes it through): after a central-config merge a key may be
        // there in two spellings; the documented one wins, as mapstructure picks it.
        guard let node = node?.asOpaqueMap() else { return config }
        config.bindAddress = try node.optionalString("bind_address")
        config.bindPort = try node.field("bind_port")?.port()
        if let timeout = try node.field("local_connect_timeout_ms") { config.localConnectTimeoutMs = try positive(timeout) }
        if let timeout = try node.field("handshake_timeout_ms") { config.handshakeTimeoutMs = try positive(timeout) }
        if let lifetime = try node.field("max_connection_lifetime") { config.maxConnectionLifetimeNs = try duration(lifetime) }
        if let idle = try node.field("idle_timeout") { config.idleTimeoutNs = try duration(idle) }
        if let limit = try node.field("max_connections") { config.maxConnections = try positive(limit) }
        if let limit = try node.field("max_pending_handshakes") { config.maxPendingHandshakes = try positive(limit) }
        if let timeout = try node.field("first_byte_timeout_ms") { config.firstByteTimeoutMs = try positive(timeout) }
        if let limit = try node.field("mux_max_streams") { config.muxMaxStreams = try positive(limit) }
        if let interval = try node.field("mux_keepalive_interval") { config.muxKeepaliveNs = try duration(interval) }
        if let proxyProtocol = try node.optionalString("proxy_protocol") {
            guard proxyProtocol.lowercased() == "v2" else {
                throw node.error("\"\(proxyProtocol)\" is not supported; only \"v2\"", at: "proxy_protocol")
            }
            config.proxyProtocol = true
        }
        try decodeRequestNormalization(node, into: &config)
        if let proto = try node.optionalString("protocol") {
            let normalized = proto.lowercased()
            guard ["tcp", "http", "http2", "grpc"].contains(normalized) else {
                throw node.error("unknown protocol \"\(proto)\"; expected tcp, http, http2 or grpc", at: "protocol")
            }
            config.protocol = normalized
        }
        return config
    }

    /// The keys of Consul's mesh `HTTP.Incoming.RequestNormalization`, with its value names.
    /// Path normalisation itself cannot be turned off (InsecureDisablePathNormalization).
    private static func decodeRequestNormalization(_ node: ConfigNode, into config: inout ProxyConfig) throws {
        if let merge = try node.field("merge_slashes") { config.pathNormalization.mergeSlashes = try merge.bool() }
        if let action = try node.optionalString("path_with_escaped_slashes_action") {
            switch action.uppercased() {
            case "REJECT_REQUEST", "IMPLEMENTATION_SPECIFIC_DEFAULT", "": config.pathNormalization.escapedSlashes = .reject
            case "KEEP_UNCHANGED": config.pathNormalization.escapedSlashes = .keep
            case "UNESCAPE_AND_FORWARD": config.pathNormalization.escapedSlashes = .unescape
            default:
                throw node.error("\"\(action)\" is not supported; expected REJECT_REQUEST (default), KEEP_UNCHANGED or UNESCAPE_AND_FORWARD",
                                 at: "path_with_escaped_slashes_action")
            }
        }
        if let action = try node.optionalString("headers_with_underscores_action") {
            switch action.uppercased() {
            case "ALLOW", "": config.underscoreHeaders = .allow
            case "REJECT_REQUEST": config.underscoreHeaders = .reject
            case "DROP_HEADER": config.underscoreHeaders = .drop
            default:
                throw node.error("\"\(action)\" is not supported; expected ALLOW, REJECT_REQUEST or DROP_HEADER",
                                 at: "headers_with_underscores_action")
            }
        }
    }

    /// A Go duration string or a number of seconds.
    static func duration(_ node: ConfigNode) throws -> Int64 {
        let text: String
        switch node.value {
        case .string(let value): text = value
        case .integer(let value): text = String(value)
        case .number(let value): text = String(value)
        default: throw node.error("expected a duration such as \"12h\" or a number of seconds")
        }
        guard let nanoseconds = ConfigDuration.parse(text) else {
            throw node.error("\"\(text)\" is not a positive duration (e.g. \"12h\", \"90m\", or seconds)")
        }
        return nanoseconds
    }

    static func positive(_ node: ConfigNode) throws -> Int {
        let value = try node.integer(weak: true)
        guard value > 0 else { throw node.error("must be greater than 0") }
        return value
    }
}
