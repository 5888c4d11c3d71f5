import FoundationEssentials
import SidecarModel

/// A `jwt` auth method for `POST /v1/acl/login`, like Consul's with static keys
/// (`consul acl auth-method create -type jwt -config '{...}'`). Consul binds identities through
/// separate binding rules; the dev agent has none and instead binds one service identity named
/// by a claim (`serviceNameClaim`, in JSON a `ClaimMappings` entry whose value is
/// `service_name`; default `sub`).
package struct DevAgentAuthMethod: Sendable {
    var name: String
    /// Only "jwt" is supported.
    var type: String = "jwt"
    /// PEM public keys (EC P-256 or RSA); a token must be signed by one of them.
    var jwtValidationPubKeys: [String]
    /// The token's `aud` (string or array) must contain one of these, when any are given.
    var boundAudiences: [String] = []
    /// The token's `iss` must equal this, when set.
    var boundIssuer: String? = nil
    /// The claim whose string value names the service identity of the minted token.
    var serviceNameClaim: String = "sub"
    /// Lifetime of minted ACL tokens (Consul's `MaxTokenTTL`); nil: they never expire.
    var maxTokenTTL: TimeInterval? = nil
    /// Tolerance for `exp`/`nbf` against the agent's clock.
    var clockSkewLeeway: TimeInterval = 60

    init(name: String, jwtValidationPubKeys: [String]) {
        self.name = name
        self.jwtValidationPubKeys = jwtValidationPubKeys
    }

    /// The file format: `{"AuthMethod": {...}}`, `{"AuthMethods": [...]}` or one bare method
    /// object, each in Consul's API shape: `{"Name", "Type": "jwt", "MaxTokenTTL": "1h",
    /// "Config": {"JWTValidationPubKeys": [PEM], "BoundAudiences": [..], "BoundIssuer": "..",
    /// "ClaimMappings": {"<claim>": "service_name"}, "ClockSkewLeeway": "60s"}}`.
    package static func load(json: Data, source: String) throws -> [DevAgentAuthMethod] {
        do {
            let root = Fields(try JSONValue.parse(json, source: source))
            return try parseAll(root)
        } catch let error as HTTPError {
            throw DevAgentError("\(source): \(error.message)")
        }
    }

    /// The auth method(s) in a config-dir document, or nil when it holds none.
    static func parseAll(_ root: Fields) throws -> [DevAgentAuthMethod] {
        if let single = root.field("AuthMethod") { return [try parse(single)] }
        if let many = try root.array("AuthMethods") { return try many.map(parse) }
        return [try parse(root)]
    }

    static func parse(_ fields: Fields) throws -> DevAgentAuthMethod {
        guard fields.isObject, let name = try fields.string("Name"), !name.isEmpty else {
            throw HTTPError.badRequest("an auth method needs a Name")
        }
        let config = fields.field("Config")
        var method = DevAgentAuthMethod(name: name, jwtValidationPubKeys: try config?.strings("JWTValidationPubKeys") ?? [])
        method.type = try fields.string("Type") ?? "jwt"
        method.boundAudiences = try config?.strings("BoundAudiences") ?? []
        method.boundIssuer = try config?.string("BoundIssuer")
        if case .object(let mappings)? = try config?.map("ClaimMappings"),
           let claim = mappings.first(where: { $0.value == .string("service_name") })?.key {
            method.serviceNameClaim = claim
        }
        method.maxTokenTTL = try duration(fields.string("MaxTokenTTL"), field: "MaxTokenTTL")
        method.clockSkewLeeway = try duration(config?.string("ClockSkewLeeway"), field: "ClockSkewLeeway") ?? 60
        return method
    }

    private static func duration(_ text: String?, field: String) throws -> TimeInterval? {
        guard let text, !text.isEmpty else { return nil }
        guard let nanoseconds = ConfigDuration.parse(text) else { throw HTTPError.badRequest("\(field) \"\(text)\" is not a duration") }
        return nanoseconds == 0 ? nil : Double(nanoseconds) / 1e9
    }

    /// Checked once when the method is added, so a bad key fails at startup, not at login.
    func validator() throws -> JWTValidator {
        guard type == "jwt" else { throw DevAgentError("auth method \(name): type \"\(type)\" is not supported (only jwt)") }
        guard !jwtValidationPubKeys.isEmpty else { throw DevAgentError("auth method \(name): JWTValidationPubKeys is empty") }
        let keys = try jwtValidationPubKeys.enumerated().map { index, pem in
            do { return try JWTPublicKey(pem: pem) } catch { throw DevAgentError("auth method \(name): JWTValidationPubKeys[\(index)]: \(error)") }
        }
        return JWTValidator(keys: keys, boundAudiences: boundAudiences, boundIssuer: boundIssuer, leeway: clockSkewLeeway)
    }
}

/// An auth method ready for logins: its settings and parsed keys.
/// `@unchecked Sendable`: the validator's keys and settings are immutable after init.
struct RegisteredAuthMethod: @unchecked Sendable {
    let method: DevAgentAuthMethod
    let validator: JWTValidator

    init(_ method: DevAgentAuthMethod) throws {
        self.method = method
        validator = try method.validator()
    }
}
