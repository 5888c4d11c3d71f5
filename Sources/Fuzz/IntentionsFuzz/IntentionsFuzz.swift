import Foundation
import FuzzSupport
import SidecarModel

/// Intentions files and the L4/L7 decisions made from them. Input: the JSON document, a NUL,
/// then NUL-separated request facts (flags, destination pick, source service and namespace,
/// method, path, header name/value pairs).
@_cdecl("LLVMFuzzerTestOneInput")
func intentionsFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let json = Data(input.field().utf8)
    let intentions: [Intention]
    do {
        intentions = try IntentionsFile.decode(json, source: "fuzz")
    } catch {
        invariant(error is ConfigError, "unexpected error \(error)")
        return 0
    }
    guard !intentions.isEmpty else { return 0 }
    let flags = input.byte()
    let target = intentions[Int(input.byte()) % intentions.count]
    let destination = target.destinationName
    let namespace = target.destinationNamespace == "*" ? "default" : target.destinationNamespace
    let sourceName = input.field(), sourceNamespace = input.field()
    let source = SPIFFEID(trustDomain: "td.consul", namespace: sourceNamespace.isEmpty ? "default" : sourceNamespace,
                          datacenter: "dc1", service: sourceName.isEmpty ? target.sourceName : sourceName)
    let method = input.field(), requestTarget = input.field()
    var headers: [(name: String, value: String)] = []
    while !input.isEmpty { headers.append((input.field(), input.field())) }
    let request = HTTPRequestFacts(method: method, path: requestTarget, headers: headers)

    let set = IntentionSet(intentions, defaultAction: flags & 1 == 0 ? .deny : .allow)
    let l4 = set.decide(source: source, destination: destination, destinationNamespace: namespace)
    let l4http = set.decide(source: source, destination: destination, destinationNamespace: namespace, l7: true)
    let l7 = set.decide(request: request, source: source, destination: destination, destinationNamespace: namespace)
    checkConsistency(l4: l4, l4http: l4http, l7: l7, set: set)

    // The decision depends on the set of intentions, not on the order they were written in.
    let reordered = IntentionSet(intentions.reversed(), defaultAction: set.defaultAction)
    invariant(reordered.decide(source: source, destination: destination, destinationNamespace: namespace) == l4,
              "L4 decision depends on intention order")
    invariant(reordered.decide(request: request, source: source, destination: destination,
                               destinationNamespace: namespace) == l7,
              "L7 decision depends on intention order")
    return 0
}

/// The L4 decision, with and without HTTP, and the L7 decision tell one story.
private func checkConsistency(l4: IntentionDecision, l4http: IntentionDecision, l7: IntentionDecision, set: IntentionSet) {
    // What cannot be evaluated (a JWT, a sameness group) denies on an HTTP listener, always.
    if case .unevaluable = l4http.reason {
        invariant(!l4http.allowed && !l7.allowed && l7.reason == l4http.reason, "unevaluable intention let something in: \(l7)")
        return
    }
    invariant(l4.reason == l4http.reason, "l7 flag changed the deciding rule: \(l4) vs \(l4http)")
    let defaultAllows = set.defaultAction == .allow
    switch l4.reason {
    case .defaultPolicy:
        invariant(l4.allowed == defaultAllows && l4http == l4 && l7 == l4, "default policy decided differently")
    case .intention:
        invariant(l4http == l4 && l7 == l4, "plain intention decided differently at L7: \(l4) vs \(l7)")
    case .requiresL7(let identifier, let precedence):
        invariant(!l4.allowed && l4http.allowed, "L7 intention: plain L4 must deny, HTTP listener admit")
        guard let intention = set.intentions.first(where: { $0.identifier == identifier }) else {
            return invariant(false, "unknown intention \(identifier)")
        }
        switch l7.reason {
        case .permission(identifier, precedence, let index):
            invariant(intention.permissions.indices.contains(index)
                          && l7.allowed == (intention.permissions[index].action == .allow), "bad permission \(index)")
        case .noPermissionMatched(identifier, precedence):
            invariant(l7.allowed == defaultAllows, "fall-through did not use the default policy")
        case .permissionRequiresJWT(identifier, precedence, let index):
            invariant(intention.permissions.indices.contains(index) && intention.permissions[index].requiresJWT && !l7.allowed,
                      "a JWT permission allowed or was not one")
        default:
            invariant(false, "L7 decided by \(l7.reason) after L4 \(l4.reason)")
        }
    default:
        invariant(false, "unexpected L4 reason \(l4.reason)")
    }
}

@main enum IntentionsFuzzMain {
    static func main() { FuzzDriver.main(intentionsFuzz) }
}
