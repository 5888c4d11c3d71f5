import FoundationEssentials
import NIOHTTP1
import SidecarHTTP
import SidecarModel

/// `/v1/config` (config entries).
struct ConfigEndpoints {
    let engine: AgentEngine

    func handle(_ route: Route) async throws -> HTTPResponse? {
        if route.matches("config") {
            try route.require(.PUT)
            let body = try Fields.parse(route.request.body, what: "the config entry")
            try engine.writeConfigEntry(body.value, source: "PUT /v1/config", tenancy: route.tenancy, access: route.access)
            return .json(.bool(true))
        }
        if let kind = route.parameter(after: "config") {
            try route.require(.GET)
            try Self.checkKind(kind)
            let blocking = try route.blocking()
            let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                (state.configIndex, JSON.array(state.configEntries.values.filter {
                    $0.kind == kind && $0.tenancy == route.tenancy && route.access.allows(Self.read(kind, $0.name))
                }
                    .sorted { $0.name < $1.name }.map { $0.rendered() }))
            }
            return .json(body, index: index)
        }
        if route.segments.count == 3 && route.segments[0] == "config" {
            let (kind, name) = (route.segments[1], route.segments[2])
            try route.require(.GET, .DELETE)
            try Self.checkKind(kind)
            try route.access.require(route.request.method == .DELETE ? Self.write(kind, name) : Self.read(kind, name))
            if route.request.method == .DELETE {
                engine.store.write { $0.deleteConfigEntry(kind: kind, name: name, tenancy: route.tenancy) }
                return .json(.bool(true))
            }
            let blocking = try route.blocking()
            let (index, entry) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                let entry = state.configEntries[ConfigEntryKey(kind: kind, name: name, tenancy: route.tenancy)]
                return (entry?.modifyIndex ?? state.configIndex, entry)
            }
            guard let entry else { throw HTTPError.notFound("Config entry not found for \"\(kind)\" / \"\(name)\"") }
            return .json(entry.rendered(), index: index)
        }
        return nil
    }

    /// Each kind's CanRead in Consul: proxy-defaults are readable by anyone.
    static func read(_ kind: String, _ name: String) -> ACLPermission? {
        switch kind {
        case "service-defaults": return .serviceRead(name)
        case "service-intentions": return .intentionRead(name)
        default: return nil
        }
    }

    /// Each kind's CanWrite in Consul.
    static func write(_ kind: String, _ name: String) -> ACLPermission {
        switch kind {
        case "service-defaults": return .serviceWrite(name)
        case "service-intentions": return .intentionWrite(name)
        default: return .meshWrite
        }
    }

    private static func checkKind(_ kind: String) throws {
        guard ConfigEntryRecord.supportedKinds.contains(kind) else { throw HTTPError.badRequest("invalid config entry kind: \(kind)") }
    }
}
