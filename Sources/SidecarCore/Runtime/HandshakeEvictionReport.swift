import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Connections closed in their handshake to make room (a full `max_pending_handshakes`):
/// counted each, audited as one line per second at most, so a flood cannot flood the log.
final class HandshakeEvictionReport: Sendable {
    private let audit: any AuditSink
    private let logger: Logger
    private let metrics: SidecarMetrics?
    /// Evictions not yet audited, and whether a line is scheduled for them.
    private let state = NIOLockedValueBox<(unreported: Int, scheduled: Bool)>((0, false))

    init(audit: any AuditSink, logger: Logger, metrics: SidecarMetrics?) {
        self.audit = audit
        self.logger = logger
        self.metrics = metrics
    }

    func evicted(listener: String, budget: Int, on eventLoop: EventLoop) {
        metrics?.handshakeEvicted(listener: listener)
        let schedule = state.withLockedValue { state -> Bool in
            state.unreported += 1
            defer { state.scheduled = true }
            return !state.scheduled
        }
        guard schedule else { return }
        // The first one is reported within a second, with all that follow it meanwhile.
        eventLoop.scheduleTask(in: .seconds(1)) { [self] in
            let count = state.withLockedValue { state -> Int in
                defer { state = (0, false) }
                return state.unreported
            }
            let reason = "\(count) connection(s) closed in their handshake to make room: more than \(budget) handshakes pending (max_pending_handshakes)"
            audit.record(AuditEvent(kind: .handshakeRejected, listener: listener, decision: "deny", reason: reason))
            logger.warning("handshake budget full: oldest handshakes closed", metadata: ["listener": "\(listener)", "closed": "\(count)"])
        }
    }
}
