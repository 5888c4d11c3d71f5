import FoundationEssentials
import NIOCore
import Glibc
import SidecarTLS

/// Closes a joined connection once neither side has read a byte for `timeout`; a graceful
/// close, since nothing is in flight on an idle connection.
enum IdleTimeout {
    static func arm(_ timeout: TimeAmount?, stats: ConnectionStats, mesh: Channel, local: Channel,
                    onIdle: @escaping @Sendable () -> Void) {
        guard let timeout else { return }
        let watch = IdleWatch(timeout: timeout, stats: stats, mesh: mesh, local: local, onIdle: onIdle)
        watch.schedule()
        mesh.closeFuture.and(local.closeFuture).whenComplete { _ in watch.cancel() }
    }
}

/// One scheduled callback per connection, due when the connection would have been idle for
/// `timeout`; when it comes due after traffic, it moves to the new moment. A repeated task,
/// polling four times per timeout, cost ~15K instructions per tunnel to arm and cancel, about
/// 3 % of a mux tunnel (callgrind); a callback has no promise and no futures. Confined to the
/// connection's event loop (both channels share it).
final class IdleWatch: NIOScheduledCallbackHandler, @unchecked Sendable {
    private let timeout: TimeAmount
    private let stats: ConnectionStats
    private let mesh: Channel
    private let local: Channel
    private let onIdle: @Sendable () -> Void
    private var callback: NIOScheduledCallback?
    private var ended = false

    init(timeout: TimeAmount, stats: ConnectionStats, mesh: Channel, local: Channel, onIdle: @escaping @Sendable () -> Void) {
        self.timeout = timeout
        self.stats = stats
        self.mesh = mesh
        self.local = local
        self.onIdle = onIdle
    }

    func schedule() {
        guard !ended else { return }
        // Always called on the connection's loop, where scheduling does not throw.
        callback = try? mesh.eventLoop.scheduleCallback(at: stats.lastActivity + timeout, handler: self)
    }

    func handleScheduledCallback(eventLoop: some EventLoop) {
        callback = nil
        guard !ended else { return }
        guard eventLoop.now - stats.lastActivity >= timeout else { return schedule() }
        ended = true
        onIdle()
        mesh.close(promise: nil)
        local.close(promise: nil)
    }

    /// Both channels closed: the callback would only hold them until it came due.
    func cancel() {
        ended = true
        callback?.cancel()
        callback = nil
    }
}

/// First handler after staging on an L7 connection's mesh side: every byte read counts as
/// activity for the idle timeout, also those a filter consumes without passing them on (a
/// denied request's body, a head still arriving), which the glue never sees.
final class ActivityStamp: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let stats: ConnectionStats

    init(_ stats: ConnectionStats) { self.stats = stats }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        stats.lastActivity = .now()
        context.fireChannelRead(data)
    }
}

/// Outbound user event for a joined connection: abort both of its channels (policy revoked it).
struct ConnectionAbortRequest: Sendable {}

/// Byte counters for one proxied connection, shared by its two glue halves (same event loop),
/// and added to the listener's meter as they move.
final class ConnectionStats {
    private let meter: TrafficMeter?
    init(meter: TrafficMeter?) { self.meter = meter }

    /// Read from the mesh side (the TLS peer), written to the local side.
    var bytesFromMesh = 0
    /// Read from the local side, written to the mesh peer.
    var bytesToMesh = 0
    let started = NIODeadline.now()
    /// Last read on either side, for the idle timeout.
    var lastActivity = NIODeadline.now()

    var durationMs: Int { Int((NIODeadline.now() - started).nanoseconds / 1_000_000) }

    func count(_ bytes: Int, readFrom side: GlueSide) {
        lastActivity = .now()
        switch side {
        case .mesh:
            bytesFromMesh += bytes
            meter?.fromMesh.increment(by: Int64(bytes))
        case .local:
            bytesToMesh += bytes
            meter?.toMesh.increment(by: Int64(bytes))
        }
    }
}

enum GlueSide { case mesh, local }

extension AuditSink {
    /// Records `closed` (a tunnel's connection_closed line) once both halves have closed, with
    /// its bytes and duration as they are then.
    func recordClose(_ closed: AuditEvent, mesh: Channel, local: Channel, stats: ConnectionStats) {
        mesh.closeFuture.and(local.closeFuture).whenComplete { _ in
            var event = closed
            event.time = Date()
            event.bytesIn = stats.bytesFromMesh
            event.bytesOut = stats.bytesToMesh
            event.durationMs = stats.durationMs
            record(event)
        }
    }
}

/// Joins two channels on one event loop: what is read on one side is written to the other
/// (raw bytes, or HTTP parts when L7 rules apply; `In` is what our channel reads, `Out` what
/// it writes, so the partner is a `GlueHandler<Out, In>`).
///
/// Backpressure: a side only reads when its partner is writable, so a slow receiver stops the
/// sender instead of growing a buffer. Half-close: EOF on one side becomes a write shutdown
/// (close_notify on TLS) on the other; the connection ends when both directions have ended.
/// Aborts propagate as aborts: a truncated TLS stream resets the local socket, never a clean EOF.
final class GlueHandler<In, Out>: ChannelDuplexHandler {
    typealias InboundIn = In
    typealias OutboundIn = Out
    typealias OutboundOut = Out

    private let side: GlueSide
    private let stats: ConnectionStats
    /// Payload bytes in one message, for the byte counters.
    private let payloadSize: (In) -> Int
    private var partner: GlueHandler<Out, In>?
    private var context: ChannelHandlerContext?
    /// A read waits for the partner to turn writable: backpressure, apart from how this side ends.
    private var pendingRead = false

    /// How our channel's ending goes: open -> outputEnded (graceful) or, from either, aborted.
    /// Only `channelInactive` reads it: aborted, or not yet outputEnded, means an abort.
    private enum State {
        /// Our channel's output still flows.
        case open
        /// We ended our channel's output (the partner's EOF passed on). Only a channel that
        /// goes inactive after this ended gracefully, whatever its input saw.
        case outputEnded
        /// Either side aborted: every further ending of this pair is an abort too (a graceful
        /// close after an abort would hand the other peer a clean end of stream). Final.
        case aborted
    }

    private var state = State.open

    private init(side: GlueSide, stats: ConnectionStats, payloadSize: @escaping (In) -> Int) {
        self.side = side
        self.stats = stats
        self.payloadSize = payloadSize
    }

    static func pair(stats: ConnectionStats, meshPayload: @escaping (In) -> Int, localPayload: @escaping (Out) -> Int)
        -> (mesh: GlueHandler<In, Out>, local: GlueHandler<Out, In>) {
        let mesh = GlueHandler<In, Out>(side: .mesh, stats: stats, payloadSize: meshPayload)
        let local = GlueHandler<Out, In>(side: .local, stats: stats, payloadSize: localPayload)
        mesh.partner = local
        local.partner = mesh
        return (mesh, local)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    // MARK: Inbound from our channel

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        stats.count(payloadSize(message), readFrom: side)
        partner?.partnerWrite(message)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            if let partner {
                partner.partnerCloseOutput()
            } else {
                context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Anything abnormal on one side is passed on as an abort of the other.
        abortPair()
    }

    /// Our side closed. After we had ended its output (and its input ended or ends with it:
    /// NIO may go straight to inactive without an inputClosed event then), the partner gets
    /// the graceful path: flush what is queued, then end its output. Any other close is not a
    /// clean end, even if an EOF was seen first: a write into a reset socket makes NIO drain
    /// the input (reporting EOF) and close without an error, and a cut must never reach the
    /// other side as a complete stream.
    func channelInactive(context: ChannelHandlerContext) {
        switch state {
        case .open, .aborted:
            abortPair()
        case .outputEnded:
            partner?.partnerCloseOutput()
        }
        context.fireChannelInactive()
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is ConnectionAbortRequest else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        abortPair()
        promise?.succeed()
    }

    // MARK: Outbound on our channel

    func read(context: ChannelHandlerContext) {
        if partner?.isWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }

    // MARK: Calls from the partner

    private var isWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerWrite(_ message: Out) {
        context?.write(wrapOutboundOut(message), promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private func partnerBecameWritable() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    /// Ends our channel's output once what is queued has been written (TLSHandler and
    /// OrderedHalfCloseHandler make the shutdown wait for pending writes).
    private func partnerCloseOutput() {
        guard let channel = context?.channel else { return }
        if case .open = state { state = .outputEnded }
        channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
    }

    /// Aborts both channels (each at most once).
    private func abortPair() {
        state = .aborted
        partner?.state = .aborted
        if let channel = partner?.context?.channel { ConnectionAbort.abort(channel) }
        if let channel = context?.channel { ConnectionAbort.abort(channel) }
    }

}

/// Aborting either kind of channel.
enum ConnectionAbort {
    /// Closes without a graceful ending: RST on plain TCP, no close_notify on TLS.
    static func abort(_ channel: Channel) {
        guard channel.isActive else { return }
        let finish = {
            channel.triggerUserOutboundEvent(TLSAbortRequest(), promise: nil)
            channel.close(promise: nil)
        }
        if let provider = channel as? SocketOptionProvider {
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).assumeIsolated().whenComplete { _ in finish() }
        } else {
            finish()
        }
    }
}

/// First handler of a plaintext socket: a write shutdown waits until everything queued before
/// it has reached the socket. NIO escalates a half-close to a full close (dropping pending
/// writes) once the input side has seen EOF, so without this the tail of a stream could be lost.
final class OrderedHalfCloseHandler: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else { return context.close(mode: mode, promise: promise) }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { _ in
            context.close(mode: .output, promise: promise)
        }
    }
}
