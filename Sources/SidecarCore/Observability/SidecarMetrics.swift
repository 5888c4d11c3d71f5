import FoundationEssentials
import NIOConcurrencyHelpers
import Prometheus

/// Prometheus metrics. Traffic metrics are derived from the audit events, so every decision
/// is counted exactly where it is audited; bytes are counted as they flow (`TrafficMeter`);
/// state (active connections, certificate expiry, instances, the process) is read at scrape
/// time. Every family and its HELP text is in `MetricFamily`.
package final class SidecarMetrics: AuditSink, Sendable {
    let registry = PrometheusCollectorRegistry()
    /// Counters and histograms already made, by family and labels. The registry builds and
    /// checks the metric's name, labels and help text on every make: per audit event that was
    /// 3 % of a storage sidecar's instructions per mux stream (callgrind). Label values are
    /// few (listeners, outcomes, categories), and the registry never forgets a metric either.
    private let made = NIOLockedValueBox(MadeMetrics())
    private struct MetricKey: Hashable {
        let family: MetricFamily
        let labels: [String]
    }
    private struct MadeMetrics {
        var counters: [MetricKey: Counter] = [:]
        var histograms: [MetricKey: DurationHistogram] = [:]
    }
    private static let handshakeBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
    ]

    package init() {
        // Present from the start at 0, so an alert on its increase sees the first loss.
        _ = counter(.auditWriteFailures, [])
    }

    package func record(_ event: AuditEvent) {
        let listener = event.listener
        switch event.kind {
        case .authorization:
            count(.connections, ("listener", listener), ("outcome", event.decision == "allow" ? "allowed" : "denied"))
            count(.intentionDecisions, ("layer", "l4"), ("result", event.decision ?? "deny"))
            handshake(event)
        case .httpRequest:
            count(.intentionDecisions, ("layer", "l7"), ("result", event.decision ?? "deny"))
        case .handshakeRejected:
            count(.connections, ("listener", listener), ("outcome", "rejected"))
            count(.handshakeFailures, ("listener", listener), ("reason", Self.failureCategory(event.reason)))
        case .upstreamConnected:
            count(.connections, ("listener", listener), ("outcome", "allowed"))
            handshake(event)
        case .upstreamFailed, .localConnectFailed, .callerRefused:
            count(.connections, ("listener", listener), ("outcome", "failed"))
        case .muxConnected:
            count(.muxConnections, ("listener", listener))
            handshake(event)
        case .tunnelRefused:
            count(.connections, ("listener", listener), ("outcome", "over_limit"))
        case .connectionRevoked:
            count(.connectionsRevoked, ("listener", listener))
        case .connectionClosed:
            break // Its bytes were counted as they flowed.
        case .intentionsUpdated, .certificateRotated, .configReloaded, .auditLogOpened, .auditLinesLost:
            break // Counted where they happen (intentionsReloaded, certificateRotated).
        }
    }

    /// The byte counters of one listener, which its connections add to on every read.
    package func trafficMeter(listener: String) -> TrafficMeter? {
        TrafficMeter(fromMesh: counter(.bytes, [("listener", listener), ("direction", "from_mesh")]),
                     toMesh: counter(.bytes, [("listener", listener), ("direction", "to_mesh")]))
    }

    func certificateRotated() { count(.certificateRotations) }
    /// A connection closed in its handshake because max_pending_handshakes were pending.
    func handshakeEvicted(listener: String) { count(.handshakesEvicted, ("listener", listener)) }
    func intentionsReloaded() { count(.intentionsReloads) }
    /// Audit lines a failed write lost (the audit sink reports them).
    package func auditLinesLost(_ lines: Int) { counter(.auditWriteFailures, []).increment(by: Int64(lines)) }

    /// A Consul watch answered and its answer was usable.
    package func consulWatchSucceeded(_ watch: String) {
        setGauge(.consulWatchLastSuccess, Date().timeIntervalSince1970, [("watch", watch)])
    }

    /// A Consul watch failed (`reason`: unreachable, http_NNN, malformed); the last good state stays.
    package func consulWatchFailed(_ watch: String, reason: String) {
        count(.consulWatchErrors, ("watch", watch), ("reason", reason))
    }

    /// `backup_sidecar_build_info` with these labels (version, commit, library versions).
    package func recordBuildInfo(_ labels: [(String, String)]) { setGauge(.buildInfo, 1, labels) }

    func setGauge(_ family: MetricFamily, _ value: Double, _ labels: [(String, String)] = []) {
        registry.makeGauge(descriptor: Self.descriptor(family), labels: labels).set(value)
    }

    /// Prometheus text exposition format: our families, then the standard process_* ones.
    func exposition() -> String {
        registry.emitToString() + (ProcessMetrics.current()?.exposition ?? "")
    }

    private func count(_ family: MetricFamily, _ labels: (String, String)...) {
        counter(family, labels).increment()
    }

    private func counter(_ family: MetricFamily, _ labels: [(String, String)]) -> Counter {
        cached(\.counters, MetricKey(family: family, labels: labels.flatMap { [$0.0, $0.1] })) {
            registry.makeCounter(descriptor: Self.descriptor(family), labels: labels)
        }
    }

    /// The metric for `key`, made by `make` the first time only.
    private func cached<Metric>(_ kind: WritableKeyPath<MadeMetrics, [MetricKey: Metric]>, _ key: MetricKey,
                                _ make: () -> Metric) -> Metric {
        made.withLockedValue { made in
            if let metric = made[keyPath: kind][key] { return metric }
            let metric = make()
            made[keyPath: kind][key] = metric
            return metric
        }
    }

    private static func descriptor(_ family: MetricFamily) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: family.rawValue, unitName: "", helpText: family.help)
    }

    private func handshake(_ event: AuditEvent) {
        guard let milliseconds = event.handshakeMs else { return }
        let histogram = cached(\.histograms, MetricKey(family: .handshakeDuration, labels: ["listener", event.listener])) {
            registry.makeDurationHistogram(descriptor: Self.descriptor(.handshakeDuration), labels: [("listener", event.listener)],
                                           buckets: Self.handshakeBuckets)
        }
        histogram.recordNanoseconds(Int64(milliseconds * 1e6))
    }

    /// A small, stable set of reasons (the audit line has the full text).
    static func failureCategory(_ reason: String?) -> String {
        guard let reason else { return "unknown" }
        if reason.hasPrefix("peer rejected: certificate chain rejected") { return "untrusted_certificate" }
        if reason.hasPrefix("peer rejected") { return "identity" }
        if reason.hasPrefix("handshake timed out") { return "timeout" }
        if reason.contains("max_pending_handshakes") { return "handshake_budget" }
        if reason.hasPrefix("our leaf certificate") { return "own_certificate_expired" }
        if reason.contains("version") || reason.contains("protocol") { return "protocol_version" }
        return "handshake_error"
    }
}

/// One listener's byte counters, shared by all its connections (atomic adds, any thread).
package struct TrafficMeter: Sendable {
    let fromMesh: Counter
    let toMesh: Counter
}
