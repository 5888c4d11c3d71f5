
/// `backup-sidecar intention check SRC DST [METHOD PATH]` (pure): the decision the sidecar
/// would make, and what made it, like `consul intention check`. Names are `NAME` or
/// `NAMESPACE/NAME`. A request is decided on its normalised path, as the L7 filter does; a path
/// the filter would refuse is a deny before any intention is read.
package enum IntentionCheck {
    package struct Outcome: Equatable, Sendable {
        package var allowed: Bool
        /// One line: what decided.
        package var explanation: String
    }

    struct InvalidName: Error, CustomStringConvertible {
        package let description: String
    }

    package static func check(_ intentions: IntentionSet, source: String, destination: String,
                             method: String? = nil, path: String? = nil) throws -> Outcome {
        let (sourceNamespace, sourceName) = try split(source)
        let (destinationNamespace, destinationName) = try split(destination)
        // Matching reads partition, namespace and name; the trust domain and datacenter do not take part.
        let identity = SPIFFEID(trustDomain: "check.consul", namespace: sourceNamespace, datacenter: "dc1", service: sourceName)
        guard let method, let path else {
            let decision = intentions.decide(source: identity, destination: destinationName, destinationNamespace: destinationNamespace)
            if case .requiresL7 = decision.reason {
                return Outcome(allowed: false, explanation: decision.reasonText
                               + " (an HTTP destination admits the connection and decides each request: give METHOD PATH)")
            }
            return Outcome(allowed: decision.allowed, explanation: decision.reasonText)
        }
        switch RequestPathNormalizer.normalize(path, PathNormalization()) {
        case .failure(let refusal):
            return Outcome(allowed: false, explanation: "request refused before intentions (400): \(refusal.reason)")
        case .success(let target):
            let facts = HTTPRequestFacts(method: method, path: target.path,
                                         headers: [(":method", method), (":path", target.target)])
            let decision = intentions.decide(request: facts, source: identity, destination: destinationName,
                                             destinationNamespace: destinationNamespace)
            let shown = target.path == path ? "" : " (normalised to \(target.path))"
            return Outcome(allowed: decision.allowed, explanation: "\(method) \(path)\(shown): \(decision.reasonText)")
        }
    }

    static func split(_ name: String) throws -> (namespace: String, name: String) {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1 where !parts[0].isEmpty: return ("default", parts[0])
        case 2 where !parts[0].isEmpty && !parts[1].isEmpty: return (parts[0], parts[1])
        default: throw InvalidName(description: "\"\(name)\" is not NAME or NAMESPACE/NAME")
        }
    }
}
