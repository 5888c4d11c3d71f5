import Testing
@testable import SidecarCore

/// Counters and histograms are made once per label set and then reused: the counts must still
/// add up per label set, and a new label set must still get a series of its own.
@Suite("Metrics from audit events")
struct SidecarMetricsTests {
    @Test("repeated events add up per label set; every set has its own series")
    func countsPerLabelSet() {
        let metrics = SidecarMetrics()
        func authorization(_ listener: String, _ decision: String) -> AuditEvent {
            var event = AuditEvent(kind: .authorization, listener: listener, decision: decision)
            event.handshakeMs = 3
            return event
        }
        for _ in 0..<5 { metrics.record(authorization("public", "allow")) }
        for _ in 0..<3 { metrics.record(authorization("public", "deny")) }
        for _ in 0..<2 { metrics.record(authorization("other", "allow")) }
        for _ in 0..<4 { metrics.record(AuditEvent(kind: .httpRequest, listener: "public", decision: "allow")) }
        let text = metrics.exposition()
        #expect(AdminTests.value(text, #"backup_sidecar_connections_total{listener="public",outcome="allowed"}"#) == 5)
        #expect(AdminTests.value(text, #"backup_sidecar_connections_total{listener="public",outcome="denied"}"#) == 3)
        #expect(AdminTests.value(text, #"backup_sidecar_connections_total{listener="other",outcome="allowed"}"#) == 2)
        #expect(AdminTests.value(text, #"backup_sidecar_intention_decisions_total{layer="l4",result="allow"}"#) == 7)
        #expect(AdminTests.value(text, #"backup_sidecar_intention_decisions_total{layer="l4",result="deny"}"#) == 3)
        #expect(AdminTests.value(text, #"backup_sidecar_intention_decisions_total{layer="l7",result="allow"}"#) == 4)
        #expect(AdminTests.value(text, #"backup_sidecar_handshake_duration_seconds_count{listener="public"}"#) == 8)
        #expect(AdminTests.value(text, #"backup_sidecar_handshake_duration_seconds_count{listener="other"}"#) == 2)
    }
}
