import SidecarModel

/// Every metric family the sidecar exports, with its HELP text: one table, so no family goes
/// out without one (`promtool check metrics` requires it) and the README list has a source.
enum MetricFamily: String, CaseIterable, Sendable {
    // Traffic, counted where it is audited.
    case connections = "backup_sidecar_connections_total"
    case connectionsActive = "backup_sidecar_connections_active"
    case connectionsRevoked = "backup_sidecar_connections_revoked_total"
    case bytes = "backup_sidecar_bytes_total"
    case handshakeDuration = "backup_sidecar_handshake_duration_seconds"
    case handshakeFailures = "backup_sidecar_handshake_failures_total"
    case handshakesEvicted = "backup_sidecar_handshakes_evicted_total"
    case intentionDecisions = "backup_sidecar_intention_decisions_total"
    case muxConnections = "backup_sidecar_mux_connections_total"
    case muxConnectionsActive = "backup_sidecar_mux_connections_active"
    case muxStreamsActive = "backup_sidecar_mux_streams_active"
    // Credentials and policy.
    case leafExpiry = "backup_sidecar_leaf_expiry_seconds"
    case trustedRoots = "backup_sidecar_trusted_roots"
    case certificateRotations = "backup_sidecar_certificate_rotations_total"
    case intentionsReloads = "backup_sidecar_intentions_reloads_total"
    // Consul and discovery.
    case consulWatchLastSuccess = "backup_sidecar_consul_watch_last_success_timestamp_seconds"
    case consulWatchErrors = "backup_sidecar_consul_watch_errors_total"
    case upstreamInstances = "backup_sidecar_upstream_instances"
    case upstreamInstancesEjected = "backup_sidecar_upstream_instances_ejected"
    case upstreamsSkipped = "backup_sidecar_upstreams_skipped"
    // The process.
    case ready = "backup_sidecar_ready"
    case buildInfo = "backup_sidecar_build_info"
    case heapInUse = "backup_sidecar_heap_in_use_bytes"
    case heapFreeRetained = "backup_sidecar_heap_free_retained_bytes"
    case auditWriteFailures = "backup_sidecar_audit_write_failures_total"

    var help: String {
        switch self {
        case .connections: "Connections by listener and outcome (allowed, denied, rejected, failed, over_limit)."
        case .connectionsActive: "Open connections on a listener, handshakes included."
        case .connectionsRevoked: "Live connections cut because intentions, certificates or max_connection_lifetime no longer allowed them."
        case .bytes: "Payload bytes through a listener's tunnels (from_mesh, to_mesh), counted as they flow."
        case .handshakeDuration: "mTLS handshake duration, accept to verified peer."
        case .handshakeFailures: "Handshakes that failed, by reason (untrusted_certificate, identity, timeout, ...)."
        case .handshakesEvicted: "Connections closed in their handshake to make room under max_pending_handshakes."
        case .intentionDecisions: "Intention decisions by layer (l4, l7) and result (allow, deny)."
        case .muxConnections: "Multiplexed (HTTP/2) transport connections established."
        case .muxConnectionsActive: "Open multiplexed transport connections (side=upstream: the pool)."
        case .muxStreamsActive: "Open tunnels carried as streams on multiplexed connections."
        case .leafExpiry: "Seconds until the leaf certificate in use expires."
        case .trustedRoots: "Trusted CA roots in use."
        case .certificateRotations: "Leaf certificate or trust bundle changes applied."
        case .intentionsReloads: "Intention sets applied."
        case .consulWatchLastSuccess: "Unix time of a Consul watch's last usable answer."
        case .consulWatchErrors: "Consul watch failures by watch and reason; the last good state keeps serving."
        case .upstreamInstances: "Healthy instances known for an upstream."
        case .upstreamInstancesEjected: "Upstream instances tried last for now after failing."
        case .upstreamsSkipped: "Upstreams in the registration that got no listener (each logged with its reason)."
        case .ready: "1 when the sidecar has credentials and intentions and its listeners are bound."
        case .buildInfo: "Always 1; the labels name the version, git commit and loaded OpenSSL and nghttp2."
        case .heapInUse: "Heap bytes in use by live allocations (glibc mallinfo2)."
        case .heapFreeRetained: "Freed heap bytes glibc keeps for reuse (RSS that is not a leak)."
        case .auditWriteFailures: "Audit lines lost because the audit log could not be written (disk full, I/O error)."
        }
    }
}
