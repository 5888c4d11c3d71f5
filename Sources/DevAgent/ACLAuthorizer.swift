import FoundationEssentials

/// A permission a Consul endpoint checks, named as Consul names it in its 403 answers.
enum ACLPermission: Sendable, Equatable {
    case agentRead
    case serviceRead(String)
    case serviceWrite(String)
    case intentionRead(String)
    case intentionWrite(String)
    case operatorRead
    case operatorWrite
    case meshWrite

    /// Consul's "lacks permission 'service:write' on \"web\"" parts.
    func denial(node: String) -> (permission: String, resource: String) {
        switch self {
        case .agentRead: return ("agent:read", node)
        case .serviceRead(let name): return ("service:read", name)
        case .serviceWrite(let name): return ("service:write", name)
        case .intentionRead(let name): return ("intention:read", name)
        case .intentionWrite(let name): return ("intention:write", name)
        case .operatorRead: return ("operator:read", "")
        case .operatorWrite: return ("operator:write", "")
        case .meshWrite: return ("mesh:write", "")
        }
    }
}

/// What a request's token may do: the grants the dev agent can mint, with the rules Consul
/// gives them. The point is to refuse what Consul refuses, so a sidecar that works here
/// works with a least-privilege token on a real agent.
enum ACLGrant: Sendable, Equatable {
    /// The agent's root token, or any request while ACLs are off.
    case management
    /// A login token: Consul's service identity (`builtin/service` templated policy):
    /// `service "S" write`, `service "S-sidecar-proxy" write`, `service_prefix "" read`,
    /// `node_prefix "" read`. Service rules imply intention read (read or write rules grant
    /// `intentions = "read"` unless set), so intentions of every service are readable; no
    /// agent, operator, mesh or intention write rule: those fall to the ACL default policy.
    case serviceIdentity(String, defaultAllow: Bool)
    /// No token while ACLs are on: Consul's anonymous token, which under the ACL default
    /// policy "deny" may do nothing and under "allow" everything.
    case anonymous(defaultAllow: Bool)

    func allows(_ permission: ACLPermission) -> Bool {
        switch self {
        case .management:
            return true
        case .anonymous(let defaultAllow):
            return defaultAllow
        case .serviceIdentity(let service, let defaultAllow):
            switch permission {
            case .serviceWrite(let name): return name == service || name == "\(service)-sidecar-proxy" || defaultAllow
            case .serviceRead, .intentionRead: return true
            case .agentRead, .intentionWrite, .operatorRead, .operatorWrite, .meshWrite: return defaultAllow
            }
        }
    }
}

/// The grant a request carries, with what Consul's 403 message names.
struct ACLAccess: Sendable {
    static let anonymousAccessorID = "00000000-0000-0000-0000-000000000002"

    let grant: ACLGrant
    let accessorID: String
    let node: String

    /// Calls from the agent's own Swift API and config directory.
    static let management = ACLAccess(grant: .management, accessorID: "", node: "")

    func allows(_ permission: ACLPermission) -> Bool { grant.allows(permission) }

    /// nil: nothing to check (e.g. reading proxy-defaults).
    func allows(_ permission: ACLPermission?) -> Bool { permission.map(allows) ?? true }

    func require(_ permission: ACLPermission?) throws {
        if let permission { try require(permission) }
    }

    /// 403 with Consul's wording when the token lacks `permission`.
    func require(_ permission: ACLPermission) throws {
        guard !allows(permission) else { return }
        let (name, resource) = permission.denial(node: node)
        let on = resource.isEmpty ? "" : " on \"\(resource)\""
        if case .anonymous = grant {
            throw HTTPError(status: 403, message: "Permission denied: anonymous token lacks permission '\(name)'\(on). The anonymous token is used implicitly when a request does not specify a token.")
        }
        throw HTTPError(status: 403, message: "Permission denied: token with AccessorID '\(accessorID)' lacks permission '\(name)'\(on)")
    }
}
