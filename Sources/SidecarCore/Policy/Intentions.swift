import SidecarTLS

public enum IntentionAction: String, Sendable, Equatable {
    case allow
    case deny
}

/// One source of a `service-intentions` entry, flattened to a Consul intention.
public struct Intention: Sendable, Equatable {
    public var destinationName: String
    public var destinationNamespace: String
    public var sourceName: String
    public var sourceNamespace: String
    public var sourcePartition: String
    /// Non-empty: the source is a cluster peer. Local SPIFFE identities never match it.
    public var sourcePeer: String
    /// nil when the source carries L7 Permissions instead of an action.
    public var action: IntentionAction?
    /// L7 rules, evaluated in order, when the destination speaks HTTP.
    public var permissions: [IntentionPermission]
    public var description: String

    public var hasPermissions: Bool { !permissions.isEmpty }

    public init(destinationName: String, destinationNamespace: String = "default",
                sourceName: String, sourceNamespace: String = "default", sourcePartition: String = "default",
                sourcePeer: String = "", action: IntentionAction?, permissions: [IntentionPermission] = [],
                description: String = "") {
        self.destinationName = destinationName
        self.destinationNamespace = destinationNamespace
        self.sourceName = sourceName
        self.sourceNamespace = sourceNamespace
        self.sourcePartition = sourcePartition
        self.sourcePeer = sourcePeer
        self.action = action
        self.permissions = permissions
        self.description = description
    }

    /// Consul's precedence: destination exact name 9, `ns/*` 6, `*/*` 3, minus one for each
    /// wildcard among the source's namespace and name.
    public var precedence: Int {
        let ceiling: Int
        if destinationName != "*" { ceiling = 9 } else if destinationNamespace != "*" { ceiling = 6 } else { ceiling = 3 }
        let exactSourceParts = (sourceNamespace != "*" ? 1 : 0) + (sourceName != "*" ? 1 : 0)
        return ceiling - (2 - exactSourceParts)
    }

    /// Human-readable and stable, used as the intention's ID in audit lines.
    public var identifier: String {
        let peer = sourcePeer.isEmpty ? "" : "peer:\(sourcePeer)/"
        return "\(peer)\(sourcePartition)/\(sourceNamespace)/\(sourceName) -> \(destinationNamespace)/\(destinationName)"
    }

    func matches(source: SPIFFEID, destination: String, destinationNamespace namespace: String) -> Bool {
        guard sourcePeer.isEmpty else { return false }
        return (destinationName == "*" || destinationName == destination)
            && (destinationNamespace == "*" || destinationNamespace == namespace)
            && (sourceName == "*" || sourceName == source.service)
            && (sourceNamespace == "*" || sourceNamespace == source.namespace)
            && (sourcePartition == "*" || sourcePartition == source.partition)
    }
}

/// The outcome of one authorization, with what decided it (for the audit log).
public struct IntentionDecision: Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        case intention(identifier: String, precedence: Int)
        case defaultPolicy
        /// A matching intention has L7 Permissions; a plain L4 connection cannot satisfy them.
        case requiresL7(identifier: String, precedence: Int)
        case intentionsNotLoaded
        /// L7: the permission at `index` of the intention decided the request.
        case permission(identifier: String, precedence: Int, index: Int)
        /// L7: the intention has permissions but none matched; the default policy decided.
        case noPermissionMatched(identifier: String, precedence: Int)
        /// L7: refused before any intention was asked (malformed, ambiguous or unsupported
        /// request); `status` is what the client was answered.
        case requestRefused(status: Int, reason: String)
    }

    public var allowed: Bool
    public var reason: Reason

    public var reasonText: String {
        switch reason {
        case .intention(let id, let precedence): return "intention \(id) (precedence \(precedence))"
        case .defaultPolicy: return "default policy"
        case .requiresL7(let id, let precedence):
            // On an HTTP listener the connection is let in and every request decided on its own.
            return "intention \(id) (precedence \(precedence)) has L7 permissions; "
                + (allowed ? "each request is decided by them" : "L4 treated as deny")
        case .intentionsNotLoaded: return "intentions not loaded"
        case .permission(let id, let precedence, let index):
            return "intention \(id) (precedence \(precedence)) permission #\(index + 1)"
        case .noPermissionMatched(let id, let precedence):
            return "intention \(id) (precedence \(precedence)): no permission matched, default policy"
        case .requestRefused(let status, let reason):
            return "request refused (\(status)): \(reason)"
        }
    }
}

/// Evaluates intentions for one destination, Consul's way: highest precedence first, deny
/// before allow at equal precedence, then lexicographic; first match wins; otherwise the
/// default policy. Pure and immutable: rebuilt whenever intentions change.
public struct IntentionSet: Sendable {
    public let defaultAction: IntentionAction
    private let ordered: [Intention]

    public init(_ intentions: [Intention], defaultAction: IntentionAction) {
        self.defaultAction = defaultAction
        self.ordered = intentions.sorted(by: Self.evaluationOrder)
    }

    public var intentions: [Intention] { ordered }

    static func evaluationOrder(_ lhs: Intention, _ rhs: Intention) -> Bool {
        if lhs.precedence != rhs.precedence { return lhs.precedence > rhs.precedence }
        let lhsDeny = lhs.action != .allow, rhsDeny = rhs.action != .allow
        if lhsDeny != rhsDeny { return lhsDeny }
        return (lhs.sourcePartition, lhs.sourceNamespace, lhs.sourceName, lhs.destinationNamespace, lhs.destinationName)
            < (rhs.sourcePartition, rhs.sourceNamespace, rhs.sourceName, rhs.destinationNamespace, rhs.destinationName)
    }

    /// The first intention that applies, in evaluation order.
    func firstMatch(source: SPIFFEID, destination: String, destinationNamespace: String) -> Intention? {
        ordered.first { $0.matches(source: source, destination: destination, destinationNamespace: destinationNamespace) }
    }

    /// The L4 decision for a connection from `source` to `destination`. With `l7` (the
    /// destination speaks HTTP), an intention with permissions lets the connection in: each
    /// request is then decided by `decide(request:...)`. Without it such an intention denies.
    public func decide(source: SPIFFEID, destination: String, destinationNamespace: String = "default",
                       l7: Bool = false) -> IntentionDecision {
        guard let intention = firstMatch(source: source, destination: destination, destinationNamespace: destinationNamespace) else {
            return IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy)
        }
        if intention.hasPermissions || intention.action == nil {
            return IntentionDecision(allowed: l7, reason: .requiresL7(identifier: intention.identifier,
                                                                      precedence: intention.precedence))
        }
        return IntentionDecision(allowed: intention.action == .allow,
                                 reason: .intention(identifier: intention.identifier, precedence: intention.precedence))
    }

    /// The L7 decision for one HTTP request: the first matching intention; if it carries
    /// permissions, the first permission whose HTTP match holds decides, and when none does
    /// the default policy decides (Consul's fall-through).
    public func decide(request: HTTPRequestFacts, source: SPIFFEID, destination: String,
                       destinationNamespace: String = "default") -> IntentionDecision {
        guard let intention = firstMatch(source: source, destination: destination, destinationNamespace: destinationNamespace) else {
            return IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy)
        }
        guard intention.hasPermissions else {
            return IntentionDecision(allowed: intention.action == .allow,
                                     reason: .intention(identifier: intention.identifier, precedence: intention.precedence))
        }
        if let index = intention.permissions.firstIndex(where: { $0.http.matches(request, inDeny: $0.action == .deny) }) {
            return IntentionDecision(allowed: intention.permissions[index].action == .allow,
                                     reason: .permission(identifier: intention.identifier, precedence: intention.precedence,
                                                         index: index))
        }
        return IntentionDecision(allowed: defaultAction == .allow,
                                 reason: .noPermissionMatched(identifier: intention.identifier, precedence: intention.precedence))
    }
}
