import NIOConcurrencyHelpers
import NIOCore

package struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    package var host: String
    package var port: Int
    /// For a discovered instance: its datacenter, which the identity it presents must name.
    /// nil: the upstream's (static instances).
    package var datacenter: String?

    package init(host: String, port: Int, datacenter: String? = nil) {
        self.host = host
        self.port = port
        self.datacenter = datacenter
    }

    /// "HOST:PORT" or "[v6]:PORT"; anything else (stray brackets, signs, bare v6) is nil.
    /// Port 0 ("let the kernel pick") only where a listener address is meant.
    package init?(parsing text: String, allowingPortZero: Bool = false) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let portText = text[text.index(after: colon)...]
        guard !portText.isEmpty, portText.allSatisfy({ $0 >= "0" && $0 <= "9" }), let port = Int(portText),
              ((allowingPortZero ? 0 : 1)...65535).contains(port) else { return nil }
        var host = text[..<colon]
        let bracketed = host.hasPrefix("[") && host.hasSuffix("]") && host.count > 2
        if bracketed { host = host.dropFirst().dropLast() }
        // An IPv6 literal must be bracketed, and brackets must hold exactly one IPv6 literal.
        guard !host.isEmpty, !host.contains("["), !host.contains("]"), host.contains(":") == bracketed else { return nil }
        self.init(host: String(host), port: port)
    }

    package var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Spreads new connections over the instances of one destination in turn (not at random), and
/// gives each connection the full list in that order so a failed dial falls through to the next.
final class EndpointRotation: Sendable {
    /// An instance that failed is tried after the others for this long, times the number of
    /// times in a row it failed again once back (at most `maxEjection`), as Envoy's outlier
    /// detection: later tunnels do not pay its timeout again. Failures reported while it is out
    /// are the same outage (the tunnels that waited on one failed dial, or were already under
    /// way) and do not lengthen it. Any success clears it.
    static let baseEjection = TimeAmount.seconds(10)
    static let maxEjection = TimeAmount.seconds(300)

    private struct Ejection {
        var until: NIODeadline
        var failures: Int
    }

    private struct State {
        var endpoints: [Endpoint]
        var next = 0
        var ejected: [Endpoint: Ejection] = [:]
    }

    private let state: NIOLockedValueBox<State>

    init(_ endpoints: [Endpoint]) { state = NIOLockedValueBox(State(endpoints: endpoints)) }

    func replace(_ endpoints: [Endpoint]) {
        state.withLockedValue { value in
            value.endpoints = endpoints
            value.ejected = value.ejected.filter { endpoints.contains($0.key) }
        }
    }

    var endpoints: [Endpoint] { state.withLockedValue { $0.endpoints } }

    var count: Int { state.withLockedValue { $0.endpoints.count } }

    /// Round robin over the instances not ejected, then the ejected ones (soonest back
    /// first): never an empty list while instances are known.
    func attemptOrder(now: NIODeadline = .now()) -> [Endpoint] {
        state.withLockedValue { value in
            guard !value.endpoints.isEmpty else { return [] }
            let start = value.next % value.endpoints.count
            value.next &+= 1
            let rotated = Array(value.endpoints[start...] + value.endpoints[..<start])
            let out = value.ejected.filter { $0.value.until > now }.mapValues(\.until)
            let ejected = rotated.filter { out[$0] != nil }.sorted { out[$0]! < out[$1]! }
            return rotated.filter { out[$0] == nil } + ejected
        }
    }

    /// The instance failed to give a tunnel (no connection, no handshake, a silent carrier).
    func failed(_ endpoint: Endpoint, now: NIODeadline = .now()) {
        state.withLockedValue { value in
            guard value.endpoints.contains(endpoint) else { return }
            if let current = value.ejected[endpoint], current.until > now { return }
            let failures = (value.ejected[endpoint]?.failures ?? 0) + 1
            let length = min(Self.baseEjection.nanoseconds * Int64(failures), Self.maxEjection.nanoseconds)
            value.ejected[endpoint] = Ejection(until: now + .nanoseconds(length), failures: failures)
        }
    }

    func succeeded(_ endpoint: Endpoint) {
        state.withLockedValue { _ = $0.ejected.removeValue(forKey: endpoint) }
    }

    /// Instances tried last for now (admin/tests).
    func ejected(now: NIODeadline = .now()) -> [Endpoint] {
        state.withLockedValue { value in value.ejected.filter { $0.value.until > now }.map(\.key) }
    }
}
