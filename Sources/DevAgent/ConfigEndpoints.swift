import Foundation
import NIOHTTP1
import SidecarCore

/// `/v1/config` (config entries) and `/v1/acl/login|logout`.
struct ConfigEndpoints {
    let engine: AgentEngine

    func handle(_ route: Route) async throws -> HTTPResponse? {
        if route.matches("config") {
            try route.require(.PUT)
            let body = try Fields.parse(route.request.body, what: "the config entry")
            try engine.writeConfigEntry(body.value, source: "PUT /v1/config")
            return .json(.bool(true))
        }
        if let kind = route.parameter(after: "config") {
            try route.require(.GET)
            try Self.checkKind(kind)
            let blocking = try route.blocking()
            let (index, body) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                (state.configIndex, JSON.array(state.configEntries.values.filter { $0.kind == kind }
                    .sorted { $0.name < $1.name }.map { $0.rendered() }))
            }
            return .json(body, index: index)
        }
        if route.segments.count == 3 && route.segments[0] == "config" {
            let (kind, name) = (route.segments[1], route.segments[2])
            try route.require(.GET, .DELETE)
            try Self.checkKind(kind)
            if route.request.method == .DELETE {
                engine.store.write { $0.deleteConfigEntry(kind: kind, name: name) }
                return .json(.bool(true))
            }
            let blocking = try route.blocking()
            let (index, entry) = try await engine.store.blockingRead(minIndex: blocking.index, wait: blocking.wait) { state in
                let entry = state.configEntries[ConfigEntryKey(kind: kind, name: name)]
                return (entry?.modifyIndex ?? state.configIndex, entry)
            }
            guard let entry else { throw HTTPError.notFound("Config entry not found for \"\(kind)\" / \"\(name)\"") }
            return .json(entry.rendered(), index: index)
        }
        if route.matches("acl", "login") {
            try route.require(.POST, .PUT)
            return .json(try login(try Fields.parse(route.request.body, what: "the login request")))
        }
        if route.matches("acl", "logout") {
            try route.require(.POST, .PUT)
            guard let token = Router.token(of: route.request),
                  engine.store.write({ $0.loginTokens.removeValue(forKey: token) }) != nil else {
                throw HTTPError.permissionDenied
            }
            return .text(.ok, "")
        }
        return nil
    }

    private static func checkKind(_ kind: String) throws {
        guard ConfigEntryRecord.supportedKinds.contains(kind) else { throw HTTPError.badRequest("invalid config entry kind: \(kind)") }
    }

    /// Exchanges a bearer token from `loginTokens` for a new ACL token of that service.
    private func login(_ body: Fields) throws -> JSON {
        guard let method = try body.string("AuthMethod"), !method.isEmpty else { throw HTTPError.badRequest("Missing auth method name") }
        guard let bearer = try body.string("BearerToken"), !bearer.isEmpty else { throw HTTPError.badRequest("Missing bearer token") }
        guard let service = engine.configuration.loginTokens[bearer] else { throw HTTPError.permissionDenied }
        let token = engine.store.write { state -> LoginToken in
            let index = state.nextIndex()
            let token = LoginToken(accessorID: UUID().uuidString.lowercased(), secretID: UUID().uuidString.lowercased(),
                                   service: service, authMethod: method, index: index)
            state.loginTokens[token.secretID] = token
            return token
        }
        return .object([
            ("AccessorID", .string(token.accessorID)),
            ("SecretID", .string(token.secretID)),
            ("Description", .string("token created via login: {\"service\":\"\(service)\"}")),
            ("ServiceIdentities", .array([.object([("ServiceName", .string(service))])])),
            ("Local", .bool(true)),
            ("AuthMethod", .string(method)),
            ("CreateTime", .string(Format.rfc3339(Date()))),
            ("Hash", .string("")),
            ("CreateIndex", .uint(token.index)),
            ("ModifyIndex", .uint(token.index)),
        ])
    }
}

/// An ACL token minted by `/v1/acl/login`.
struct LoginToken: Sendable {
    var accessorID: String
    var secretID: String
    var service: String
    var authMethod: String
    var index: UInt64
}
