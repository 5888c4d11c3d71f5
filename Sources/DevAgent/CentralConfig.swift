import SidecarModel

extension AgentState {
    /// What Consul's agent does with central config (`enable_central_service_config`, on by
    /// default) before it answers `/v1/agent/service/:id`: a proxy registration without its own
    /// `protocol` gets the one from `service-defaults` for its destination, else from
    /// `proxy-defaults` "global". The local registration wins, as in Consul.
    func resolvingCentralConfig(_ service: ServiceRecord) -> ServiceRecord {
        guard service.kind == "connect-proxy", var proxy = service.proxy else { return service }
        var config: [String: JSONValue] = [:]
        if case .object(let given) = proxy.config { config = given }
        guard !config.keys.contains(where: { $0.lowercased() == "protocol" }),
              let inherited = centralProtocol(for: proxy.destinationServiceName, tenancy: service.tenancy) else { return service }
        config["protocol"] = .string(inherited)
        proxy.config = .object(config)
        var resolved = service
        resolved.proxy = proxy
        return resolved
    }

    /// proxy-defaults live in a partition's default namespace.
    private func centralProtocol(for destination: String, tenancy: Tenancy) -> String? {
        if let entry = configEntries[ConfigEntryKey(kind: "service-defaults", name: destination, tenancy: tenancy)],
           let value = Self.protocolField(entry.body) {
            return value
        }
        guard let global = configEntries[ConfigEntryKey(kind: "proxy-defaults", name: "global",
                                                        tenancy: Tenancy(namespace: "default", partition: tenancy.partition))],
              case .object(let fields) = global.body,
              let config = fields.first(where: { $0.0 == "Config" })?.1 else { return nil }
        return Self.protocolField(config)
    }

    /// `Protocol` (service-defaults) or `protocol` inside a Config map, in either case.
    private static func protocolField(_ body: JSON) -> String? {
        guard case .object(let fields) = body else { return nil }
        for (key, value) in fields where key.lowercased() == "protocol" {
            if case .string(let text) = value, !text.isEmpty { return text.lowercased() }
        }
        return nil
    }
}
