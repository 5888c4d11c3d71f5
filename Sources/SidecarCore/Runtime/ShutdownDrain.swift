import Logging
import NIOCore
import SidecarMux

/// The wait at the end of a graceful shutdown, once listeners are closed: in-flight tunnels
/// may finish until the deadline; whatever is left is audited and aborted.
struct ShutdownDrain {
    let table: ConnectionTable
    let group: EventLoopGroup
    let audit: any AuditSink
    let logger: Logger

    /// Returns the number of tunnels that had to be aborted.
    func run(timeout: TimeAmount) async -> Int {
        // A connection accepted just before the close may still be crossing from the
        // listener's loop to its own (three hops in NIO) before we track it: let every loop
        // run what is queued, so it is counted below instead of outliving the event loops.
        await settleEventLoops()
        logger.notice("draining", metadata: ["open_connections": "\(table.total)", "timeout_s": "\(timeout.nanoseconds / 1_000_000_000)"])
        let deadline = NIODeadline.now() + timeout
        // Cancellation (a second signal) ends the wait early: what is left is aborted below.
        while table.total > 0 && NIODeadline.now() < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
        }
        // Tunnels are what gets aborted and audited: plain connections and mux streams. A mux
        // connection still carrying streams goes with them, without a line of its own.
        let leftovers = table.channels
        let tunnels = leftovers.filter { !$0.isMuxCarrier }
        for tunnel in tunnels {
            var event = AuditEvent(kind: .connectionRevoked, listener: tunnel.listener,
                                   peerAddress: tunnel.channel.remoteAddress.auditDescription,
                                   decision: "deny", reason: "drain timeout reached at shutdown")
            event.muxStream = (tunnel.channel as? MuxStreamIdentifying).map { Int($0.muxStreamID) }
            event.connectionID = tunnel.id
            if let record = tunnel.tunnel {
                // Joined tunnels say who they were; the rest were still in their handshake.
                event.muxConnectionID = record.muxConnectionID
                if record.direction == .inbound { event.source = record.peerIdentity } else { event.destination = record.peerIdentity }
            }
            audit.record(event)
        }
        for tracked in tunnels + leftovers.filter(\.isMuxCarrier) {
            let channel = tracked.channel
            channel.triggerUserOutboundEvent(ConnectionAbortRequest()).whenFailure { _ in ConnectionAbort.abort(channel) }
        }
        // The aborts and the callbacks they queue on other loops finish before we return (the
        // caller shuts the loops down next).
        if !leftovers.isEmpty {
            let loop = group.next()
            let finished = loop.makePromise(of: Void.self)
            EventLoopFuture.andAllComplete(leftovers.map(\.channel.closeFuture), on: loop).cascade(to: finished)
            let bound = loop.scheduleTask(in: .seconds(5)) { finished.succeed() } // never hang an exit on one channel
            try? await finished.futureResult.get()
            bound.cancel()
        }
        await settleEventLoops()
        logger.notice("drained", metadata: ["aborted": "\(tunnels.count)"])
        return tunnels.count
    }

    /// Runs an empty task on every event loop, a few times over: whatever they had queued
    /// (and what that queued on another loop) has run when it returns.
    private func settleEventLoops() async {
        for _ in 0..<3 {
            for loop in group.makeIterator() { try? await loop.submit {}.get() }
        }
    }
}
