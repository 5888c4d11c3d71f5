import FoundationEssentials
import NIOHTTP1
import SidecarHTTP
import SidecarModel

/// `/v1/acl/login` and `/v1/acl/logout`: bearer tokens exchanged for ACL tokens through the
/// configured auth methods.
struct ACLEndpoints {
    let engine: AgentEngine

    func handle(_ route: Route) async throws -> HTTPResponse? {
        if route.matches("acl", "login") {
            try route.require(.POST, .PUT)
            let body = try Fields.parse(route.request.body, what: "the login request")
            guard let method = try body.string("AuthMethod"), !method.isEmpty else { throw HTTPError.badRequest("Missing auth method name") }
            guard let bearer = try body.string("BearerToken"), !bearer.isEmpty else { throw HTTPError.badRequest("Missing bearer token") }
            return .json(try engine.login(method: method, bearerToken: bearer, meta: try body.map("Meta")).rendered())
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
}

/// An ACL token minted by `/v1/acl/login`.
struct LoginToken: Sendable {
    var accessorID: String
    var secretID: String
    var service: String
    var authMethod: String
    var meta: JSONValue?
    var created: Date
    /// nil: valid until logged out.
    var expirationTime: Date?
    var index: UInt64

    func isValid(at now: Date) -> Bool {
        expirationTime.map { now < $0 } ?? true
    }

    /// Consul's ACLToken JSON as login returns it.
    func rendered() -> JSON {
        var fields: [(String, JSON)] = [
            ("AccessorID", .string(accessorID)),
            ("SecretID", .string(secretID)),
            ("Description", .string("token created via login: {\"service\":\"\(service)\"}")),
            ("ServiceIdentities", .array([.object([("ServiceName", .string(service))])])),
            ("Local", .bool(true)),
            ("AuthMethod", .string(authMethod)),
        ]
        if let expirationTime { fields.append(("ExpirationTime", .string(Timestamp.rfc3339(expirationTime)))) }
        if let meta { fields.append(("Meta", JSON(meta))) }
        fields += [
            ("CreateTime", .string(Timestamp.rfc3339(created))),
            ("Hash", .string("")),
            ("CreateIndex", .uint(index)),
            ("ModifyIndex", .uint(index)),
        ]
        return .object(fields)
    }
}

extension AgentEngine {
    func addAuthMethod(_ method: DevAgentAuthMethod) throws {
        let registered = try RegisteredAuthMethod(method)
        store.write { $0.authMethods[method.name] = registered }
    }

    /// Validates `bearerToken` with the named method and mints a token for the service its
    /// claim names. Refusals are 403 with the reason (never the token) and logged.
    func login(method name: String, bearerToken: String, meta: JSONValue?) throws -> LoginToken {
        let now = configuration.clock()
        guard let registered = store.read({ $0.authMethods[name] }) else {
            logger.warning("dev agent: login refused", metadata: ["auth_method": "\(name)", "reason": "no such auth method"])
            throw HTTPError(status: 403, message: "Permission denied: auth method \"\(name)\" not found")
        }
        let service: String
        do {
            let claims = try registered.validator.validate(bearerToken, now: now)
            let claim = registered.method.serviceNameClaim
            guard let value = claims[claim]?.stringValue, !value.isEmpty else {
                throw JWTRejection("claim \"\(claim)\" (the service name) is missing or not a string")
            }
            service = value
        } catch {
            logger.warning("dev agent: login refused", metadata: ["auth_method": "\(name)", "reason": "\(error)"])
            throw HTTPError(status: 403, message: "Permission denied: \(error)")
        }
        let token = store.write { state -> LoginToken in
            let token = LoginToken(accessorID: UUID().uuidString.lowercased(), secretID: UUID().uuidString.lowercased(),
                                   service: service, authMethod: name, meta: meta, created: now,
                                   expirationTime: registered.method.maxTokenTTL.map { now.addingTimeInterval($0) },
                                   index: state.nextIndex())
            // Expired tokens are dropped here rather than by a timer.
            state.loginTokens = state.loginTokens.filter { $0.value.isValid(at: now) }
            state.loginTokens[token.secretID] = token
            state.loginCount += 1
            return token
        }
        logger.info("dev agent: login", metadata: [
            "auth_method": "\(name)", "service": "\(service)", "accessor_id": "\(token.accessorID)",
        ])
        return token
    }
}
