
package enum IntentionAction: String, Sendable, Equatable {
    case allow
    case deny
}

/// One source of a `service-intentions` entry, flattened to a Consul intention.
package struct Intention: Sendable, Equatable {
    package var destinationName: String
    package var destinationNamespace: String
    package var sourceName: String
    package var sourceNamespace: String
    package var sourcePartition: String
    /// Non-empty: the source is a cluster peer. Local SPIFFE identities never match it.
    package var sourcePeer: String
    /// nil when the source carries L7 Permissions instead of an action.
    package var action: IntentionAction?
    /// L7 rules, evaluated in order, when the destination speaks HTTP.
    package var permissions: [IntentionPermission]
    package var description: String
    /// The destination's partition (Consul Enterprise); only "default" is ours.
    package var destinationPartition = "default"
    /// The entry's `JWT`: Consul would also require a valid token from its providers on every
    /// HTTP request, which this sidecar cannot verify. Such an intention decides deny on L7
    /// listeners (TCP ones ignore it, as Consul does).
    package var requiresJWT = false
    /// Non-empty: the source is a sameness group (Consul Enterprise), whose members cannot be
    /// told here. Such an intention matches its name in any partition and decides deny.
    package var sourceSamenessGroup = ""

    package var hasPermissions: Bool { !permissions.isEmpty }

    package init(destinationName: String, destinationNamespace: String = "default",
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
    package var precedence: Int {
        let ceiling: Int
        if destinationName != "*" { ceiling = 9 } else if destinationNamespace != "*" { ceiling = 6 } else { ceiling = 3 }
        let exactSourceParts = (sourceNamespace != "*" ? 1 : 0) + (sourceName != "*" ? 1 : 0)
        return ceiling - (2 - exactSourceParts)
    }

    /// Human-readable and stable, used as the intention's ID in audit lines.
    package var identifier: String {
        let origin = !sourcePeer.isEmpty ? "peer:\(sourcePeer)/" : !sourceSamenessGroup.isEmpty ? "sameness-group:\(sourceSamenessGroup)/" : ""
        let destination = destinationPartition == "default" ? "" : "\(destinationPartition)/"
        return "\(origin)\(sourcePartition)/\(sourceNamespace)/\(sourceName) -> \(destination)\(destinationNamespace)/\(destinationName)"
    }

    /// What about this intention the sidecar cannot evaluate (it then decides deny), if anything.
    func unevaluable(l7: Bool) -> String? {
        if !sourceSamenessGroup.isEmpty { return "its source is sameness group \(sourceSamenessGroup), which this sidecar cannot resolve" }
        if requiresJWT && l7 { return "it requires a JWT, which this sidecar cannot verify" }
        return nil
    }

    func matches(source: SPIFFEID, destination: String, destinationNamespace namespace: String,
                 destinationPartition partition: String) -> Bool {
        guard sourcePeer.isEmpty else { return false }
        // The names first: they tell intentions apart, so most of a large set fails there at
        // once (a partition, nearly always "default", was compared in full for every one).
        return (destinationName == "*" || destinationName == destination)
            && (sourceName == "*" || sourceName == source.service)
            && destinationPartition == partition
            && (destinationNamespace == "*" || destinationNamespace == namespace)
            && (sourceNamespace == "*" || sourceNamespace == source.namespace)
            // A sameness group may hold any partition; fail closed by matching them all.
            && (!sourceSamenessGroup.isEmpty || sourcePartition == "*" || sourcePartition == source.partition)
    }
}

/// The outcome of one authorization, with what decided it (for the audit log).
package struct IntentionDecision: Sendable, Equatable {
    package enum Reason: Sendable, Equatable {
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
        /// The matching intention has a condition this sidecar cannot evaluate: denied.
        case unevaluable(identifier: String, precedence: Int, what: String)
        /// L7: the matching permission requires a JWT, which this sidecar cannot verify: denied.
        case permissionRequiresJWT(identifier: String, precedence: Int, index: Int)
    }

    package var allowed: Bool
    package var reason: Reason

    package init(allowed: Bool, reason: Reason) {
        self.allowed = allowed
        self.reason = reason
    }

    package var reasonText: String {
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
        case .unevaluable(let id, let precedence, let what):
            return "intention \(id) (precedence \(precedence)) denied: \(what)"
        case .permissionRequiresJWT(let id, let precedence, let index):
            return "intention \(id) (precedence \(precedence)) permission #\(index + 1) denied: it requires a JWT, which this sidecar cannot verify"
        }
    }
}

/// Evaluates intentions for one destination, Consul's way: highest precedence first, deny
/// before allow at equal precedence, then lexicographic; first match wins; otherwise the
/// default policy. Pure and immutable: rebuilt whenever intentions change.
package struct IntentionSet: Sendable {
    package let defaultAction: IntentionAction
    private let ordered: [Intention]
    /// `ordered[i].identifier`, built once: every decision names its intention, and building
    /// the name was a third of an L4 decision's instructions.
    private let identifiers: [String]

    package init(_ intentions: [Intention], defaultAction: IntentionAction) {
        self.defaultAction = defaultAction
        self.ordered = intentions.sorted(by: Self.evaluationOrder)
        self.identifiers = ordered.map(\.identifier)
    }

    package var intentions: [Intention] { ordered }

    static func evaluationOrder(_ lhs: Intention, _ rhs: Intention) -> Bool {
        if lhs.precedence != rhs.precedence { return lhs.precedence > rhs.precedence }
        let lhsDeny = lhs.action != .allow, rhsDeny = rhs.action != .allow
        if lhsDeny != rhsDeny { return lhsDeny }
        return (lhs.sourcePartition, lhs.sourceNamespace, lhs.sourceName, lhs.destinationNamespace, lhs.destinationName)
            < (rhs.sourcePartition, rhs.sourceNamespace, rhs.sourceName, rhs.destinationNamespace, rhs.destinationName)
    }

    /// The first intention that applies, in evaluation order. The destination's namespace and
    /// partition are ours (from our leaf); intentions for another partition never apply.
    func firstMatch(source: SPIFFEID, destination: String, destinationNamespace: String,
                    destinationPartition: String) -> (intention: Intention, identifier: String)? {
        let index = ordered.firstIndex {
            $0.matches(source: source, destination: destination, destinationNamespace: destinationNamespace,
                       destinationPartition: destinationPartition)
        }
        return index.map { (ordered[$0], identifiers[$0]) }
    }

    /// What in these intentions cannot be evaluated here, one line each (logged on load; each
    /// such condition decides deny).
    package var unevaluableConditions: [String] {
        ordered.flatMap { intention -> [String] in
            var found: [String] = []
            if let what = intention.unevaluable(l7: true) { found.append("intention \(intention.identifier): \(what)") }
            for (index, permission) in intention.permissions.enumerated() where permission.requiresJWT {
                found.append("intention \(intention.identifier) permission #\(index + 1): it requires a JWT, which this sidecar cannot verify")
            }
            return found
        }
    }

    /// The L4 decision for a connection from `source` to `destination`. With `l7` (the
    /// destination speaks HTTP), an intention with permissions lets the connection in: each
    /// request is then decided by `decide(request:...)`. Without it such an intention denies.
    /// An intention with a condition we cannot evaluate denies.
    package func decide(source: SPIFFEID, destination: String, destinationNamespace: String = "default",
                       destinationPartition: String = "default", l7: Bool = false) -> IntentionDecision {
        guard let (intention, identifier) = firstMatch(source: source, destination: destination, destinationNamespace: destinationNamespace,
                                                       destinationPartition: destinationPartition) else {
            return IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy)
        }
        if let what = intention.unevaluable(l7: l7) {
            return IntentionDecision(allowed: false, reason: .unevaluable(identifier: identifier,
                                                                           precedence: intention.precedence, what: what))
        }
        if intention.hasPermissions || intention.action == nil {
            return IntentionDecision(allowed: l7, reason: .requiresL7(identifier: identifier, precedence: intention.precedence))
        }
        return IntentionDecision(allowed: intention.action == .allow,
                                 reason: .intention(identifier: identifier, precedence: intention.precedence))
    }

    /// The L7 decision for one HTTP request: the first matching intention; if it carries
    /// permissions, the first permission whose HTTP match holds decides, and when none does
    /// the default policy decides (Consul's fall-through). A permission requiring a JWT denies
    /// whatever its action (Consul would deny a request without a valid token there too, and
    /// would not look further); its HTTP match is read the wide way, as a deny's.
    package func decide(request: HTTPRequestFacts, source: SPIFFEID, destination: String,
                       destinationNamespace: String = "default", destinationPartition: String = "default") -> IntentionDecision {
        guard let (intention, identifier) = firstMatch(source: source, destination: destination, destinationNamespace: destinationNamespace,
                                                       destinationPartition: destinationPartition) else {
            return IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy)
        }
        let precedence = intention.precedence
        if let what = intention.unevaluable(l7: true) {
            return IntentionDecision(allowed: false, reason: .unevaluable(identifier: identifier, precedence: precedence, what: what))
        }
        guard intention.hasPermissions else {
            return IntentionDecision(allowed: intention.action == .allow, reason: .intention(identifier: identifier, precedence: precedence))
        }
        let matched = intention.permissions.firstIndex {
            $0.http.matches(request, inDeny: $0.action == .deny || $0.requiresJWT)
        }
        guard let index = matched else {
            return IntentionDecision(allowed: defaultAction == .allow,
                                     reason: .noPermissionMatched(identifier: identifier, precedence: precedence))
        }
        if intention.permissions[index].requiresJWT {
            return IntentionDecision(allowed: false, reason: .permissionRequiresJWT(identifier: identifier, precedence: precedence, index: index))
        }
        return IntentionDecision(allowed: intention.permissions[index].action == .allow,
                                 reason: .permission(identifier: identifier, precedence: precedence, index: index))
    }
}
