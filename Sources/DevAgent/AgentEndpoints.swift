import FoundationEssentials
import NIOHTTP1
import SidecarHTTP
import SidecarModel

/// `/v1/agent/*` (services, checks, self), `/v1/health/*` and `/v1/catalog/services`.
struct AgentEndpoints {
    let engine: AgentEngine
    var rendering: ServiceRendering { engine.rendering }

    func handle(_ route: Route) async throws -> HTTPResponse? {
        let request = route.request
        let access = route.access
        if route.matches("agent", "self") {
            try route.require(.GET)
            try access.require(.agentRead)
            return .json(agentSelf())
        }
        if route.matches("agent", "services") {
            try route.require(.GET)
            // Filtered, like Consul: what the token cannot read is left out, not refused.
            let services = engine.store.read { state in
                state.services.values.filter { $0.tenancy == route.tenancy && access.allows(.serviceRead($0.name)) }
                    .sorted { $0.id < $1.id }.map { ($0.id, rendering.agentService($0)) }
            }
            return .json(.object(services))
        }
        if route.matches("agent", "service", "register") {
            try route.require(.PUT)
            try engine.register(try Fields.parse(request.body, what: "the service definition"), tenancy: route.tenancy, access: access)
            return .text(.ok, "")
        }
        if let id = route.parameter(after: "agent", "service", "deregister") {
            try route.require(.PUT)
            try engine.deregister(id, access: access)
            return .text(.ok, "")
        }
        // After register: "register" is not a service ID.
        if let id = route.parameter(after: "agent", "service") {
            try route.require(.GET)
            return try await service(id, route: route)
        }
        for (verb, status) in [("pass", "passing"), ("warn", "warning"), ("fail", "critical")] {
            if let id = route.parameter(after: "agent", "check", verb) {
                try route.require(.PUT)
                try engine.updateCheck(id, status: status, output: request.queryValue("note") ?? "", access: access)
                return .text(.ok, "")
            }
        }
        if route.matches("agent", "checks") {
            try route.require(.GET)
            let checks = engine.store.read { state in
                state.checks.values.filter { $0.serviceName.isEmpty ? access.grant == .management : access.allows(.serviceRead($0.serviceName)) }
                    .sorted { $0.id < $1.id }.map { ($0.id, rendering.check($0, status: state.status(of: $0), state: state)) }
            }
            return .json(.object(checks))
        }
        for (kind, connect) in [("service", false), ("connect", true)] {
            if let name = route.parameter(after: "health", kind) {
                try route.require(.GET)
                let blocking = try route.blocking()
                let passing = request.hasQuery("passing") && request.queryValue("passing") != "false"
                // A token that may not read the service gets an empty list, not a 403 (Consul
                // filters and says so in a header).
                let readable = access.allows(.serviceRead(name))
                let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                    (max(state.servicesIndex, state.checksIndex),
                     readable ? rendering.healthEntries(state, connect: connect, name: name, tenancy: route.tenancy,
                                                        passingOnly: passing) : JSON.array([]))
                }
                return .json(body, index: index, extraHeaders: readable ? [] : [("X-Consul-Results-Filtered-By-ACLs", "true")])
            }
        }
        if route.matches("catalog", "services") {
            try route.require(.GET)
            let blocking = try route.blocking()
            let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                var tags: [String: Set<String>] = [:]
                for service in state.services.values where access.allows(.serviceRead(service.name)) {
                    tags[service.name, default: []].formUnion(service.tags)
                }
                return (state.servicesIndex, JSON.object(tags.sorted { $0.key < $1.key }.map { ($0.key, .array($0.value.sorted().map(JSON.string))) }))
            }
            return .json(body, index: index)
        }
        return nil
    }

    /// `/v1/agent/service/:id`, blocking on the registration's content hash.
    private func service(_ id: String, route: Route) async throws -> HTTPResponse {
        let wantedHash = route.request.queryValue("hash")
        let wait = try route.waitDuration()
        let deadline = ContinuousClock.now + wait
        while true {
            let (global, service) = engine.store.read { state in
                (state.index, state.services[id].flatMap { $0.tenancy == route.tenancy ? state.resolvingCentralConfig($0) : nil })
            }
            guard let service else { throw HTTPError.notFound("unknown service ID: \(id)") }
            try route.access.require(.serviceRead(service.name))
            let hash = ServiceRendering.contentHash(of: service)
            if wantedHash == nil || wantedHash != hash || ContinuousClock.now >= deadline || Task.isCancelled {
                return .json(rendering.agentService(service, contentHash: true),
                             extraHeaders: [("X-Consul-ContentHash", hash)])
            }
            await engine.store.waitForWrite(after: global, until: deadline)
        }
    }

    private func agentSelf() -> JSON {
        let configuration = engine.configuration
        return .object([
            ("Config", .object([
                ("Datacenter", .string(configuration.datacenter)),
                ("PrimaryDatacenter", .string(configuration.datacenter)),
                ("NodeName", .string(configuration.nodeName)),
                ("NodeID", .string(rendering.nodeID)),
                ("Server", .bool(true)),
                ("Revision", .string("dev-agent")),
                ("Version", .string("1.20.0-dev-agent")),
            ])),
            ("DebugConfig", .object([
                ("Datacenter", .string(configuration.datacenter)),
                // As configured: "" means the ACL default policy decides.
                ("DefaultIntentionPolicy", .string(configuration.defaultIntentionPolicy.lowercased())),
                ("ACLsEnabled", .bool(configuration.aclToken != nil)),
                ("ConnectEnabled", .bool(true)),
            ])),
            ("Member", .object([
                ("Name", .string(configuration.nodeName)),
                ("Addr", .string("127.0.0.1")),
                ("Port", .int(8301)),
                ("Tags", .object([("dc", .string(configuration.datacenter)), ("role", .string("consul"))])),
                ("Status", .int(1)),
            ])),
        ])
    }
}
