import Logging
import NIOConcurrencyHelpers
import SidecarTLS
import SidecarModel

/// The intentions in force, decided for our own identity: the destination's namespace and
/// partition are those of our current leaf. Until intentions have loaded every decision is a
/// refusal.
final class Authorizer: Sendable {
    private let intentions: NIOLockedValueBox<IntentionSet?>
    private let contexts: TLSContextStore

    init(intentions: IntentionSet?, contexts: TLSContextStore) {
        self.intentions = NIOLockedValueBox(intentions)
        self.contexts = contexts
    }

    var current: IntentionSet? { intentions.withLockedValue { $0 } }

    func replace(with set: IntentionSet) { intentions.withLockedValue { $0 = set } }

    /// A connection or stream. `l7` is how it is (to be) joined, not the protocol in force
    /// now: a tunnel joined raw must be decided as raw even if the service became http since.
    func decide(source: SPIFFEID, destination: String, l7: Bool, with set: IntentionSet? = nil) -> IntentionDecision {
        guard let set = set ?? current else { return IntentionDecision(allowed: false, reason: .intentionsNotLoaded) }
        let own = contexts.credentials.identity
        return set.decide(source: source, destination: destination, destinationNamespace: own.namespace,
                          destinationPartition: own.partition, l7: l7)
    }

    /// One HTTP request on a filtered tunnel.
    func decide(request: HTTPRequestFacts, source: SPIFFEID, destination: String) -> IntentionDecision {
        guard let set = current else { return IntentionDecision(allowed: false, reason: .intentionsNotLoaded) }
        let own = contexts.credentials.identity
        return set.decide(request: request, source: source, destination: destination, destinationNamespace: own.namespace,
                          destinationPartition: own.partition)
    }

    /// Conditions Consul would check and we cannot (a JWT, a sameness group) decide deny; say
    /// so whenever such intentions load, so the refusals they cause are no surprise.
    static func warnUnevaluable(_ set: IntentionSet, logger: Logger) {
        for condition in set.unevaluableConditions {
            logger.warning("intention condition cannot be evaluated; requests it governs are denied", metadata: [
                "condition": "\(condition)",
            ])
        }
    }
}
