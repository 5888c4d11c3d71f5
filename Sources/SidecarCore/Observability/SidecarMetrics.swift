import CoreMetrics
import Foundation
import Metrics
import NIOConcurrencyHelpers
import Prometheus

/// Prometheus metrics (through swift-metrics). Traffic metrics are derived from the audit
/// events, so every decision is counted exactly where it is audited; state (active
/// connections, certificate expiry, instances) is read at scrape time.
public final class SidecarMetrics: AuditSink, Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory

    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
        ]
        self.factory = factory
    }

    public func record(_ event: AuditEvent) {
        let listener = event.listener
        switch event.kind {
        case .authorization:
            count("backup_sidecar_connections_total", ("listener", listener), ("outcome", event.decision == "allow" ? "allowed" : "denied"))
            count("backup_sidecar_intention_decisions_total", ("layer", "l4"), ("result", event.decision ?? "deny"))
            handshake(event)
        case .httpRequest:
            count("backup_sidecar_intention_decisions_total", ("layer", "l7"), ("result", event.decision ?? "deny"))
        case .handshakeRejected:
            count("backup_sidecar_connections_total", ("listener", listener), ("outcome", "rejected"))
            count("backup_sidecar_handshake_failures_total", ("listener", listener), ("reason", Self.failureCategory(event.reason)))
        case .upstreamConnected:
            count("backup_sidecar_connections_total", ("listener", listener), ("outcome", "allowed"))
            handshake(event)
        case .upstreamFailed, .localConnectFailed, .callerRefused:
            count("backup_sidecar_connections_total", ("listener", listener), ("outcome", "failed"))
        case .muxConnected:
            count("backup_sidecar_mux_connections_total", ("listener", listener))
            handshake(event)
        case .tunnelRefused:
            count("backup_sidecar_connections_total", ("listener", listener), ("outcome", "over_limit"))
        case .connectionRevoked:
            count("backup_sidecar_connections_revoked_total", ("listener", listener))
        case .connectionClosed:
            Counter(label: "backup_sidecar_bytes_total", dimensions: [("listener", listener), ("direction", "from_mesh")], factory: factory)
                .increment(by: event.bytesIn ?? 0)
            Counter(label: "backup_sidecar_bytes_total", dimensions: [("listener", listener), ("direction", "to_mesh")], factory: factory)
                .increment(by: event.bytesOut ?? 0)
        }
    }

    func certificateRotated() { count("backup_sidecar_certificate_rotations_total") }
    /// A connection closed in its handshake because max_pending_handshakes were pending.
    func handshakeEvicted(listener: String) { count("backup_sidecar_handshakes_evicted_total", ("listener", listener)) }
    func intentionsReloaded() { count("backup_sidecar_intentions_reloads_total") }

    /// A Consul watch answered and its answer was usable.
    public func consulWatchSucceeded(_ watch: String) {
        setGauge("backup_sidecar_consul_watch_last_success_timestamp_seconds", Date().timeIntervalSince1970, [("watch", watch)])
    }

    /// A Consul watch failed (`reason`: unreachable, http_NNN, malformed); the last good state stays.
    public func consulWatchFailed(_ watch: String, reason: String) {
        count("backup_sidecar_consul_watch_errors_total", ("watch", watch), ("reason", reason))
    }

    func setGauge(_ name: String, _ value: Double, _ dimensions: [(String, String)] = []) {
        Gauge(label: name, dimensions: dimensions, factory: factory).record(value)
    }

    /// Prometheus text exposition format.
    public func exposition() -> String { registry.emitToString() }

    private func count(_ name: String, _ dimensions: (String, String)...) {
        Counter(label: name, dimensions: dimensions, factory: factory).increment()
    }

    private func handshake(_ event: AuditEvent) {
        guard let milliseconds = event.handshakeMs else { return }
        Timer(label: "backup_sidecar_handshake_duration_seconds", dimensions: [("listener", event.listener)], factory: factory)
            .recordNanoseconds(Int64(milliseconds * 1e6))
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
