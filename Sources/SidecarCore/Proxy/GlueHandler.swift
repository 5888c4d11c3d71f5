import NIOCore
import Glibc
import SidecarTLS

/// Outbound user event for a joined connection: abort both of its channels (policy revoked it).
struct ConnectionAbortRequest: Sendable {}

/// Byte counters for one proxied connection, shared by its two glue halves (same event loop).
final class ConnectionStats {
    /// Read from the mesh side (the TLS peer), written to the local side.
    var bytesFromMesh = 0
    /// Read from the local side, written to the mesh peer.
    var bytesToMesh = 0
    let started = NIODeadline.now()

    var durationMs: Int { Int((NIODeadline.now() - started).nanoseconds / 1_000_000) }
}

/// Joins two channels on one event loop: bytes read on one side are written to the other.
///
/// Backpressure: a side only reads when its partner is writable, so a slow receiver stops the
/// sender instead of growing a buffer. Half-close: EOF on one side becomes a write shutdown
/// (close_notify on TLS) on the other; the connection ends when both directions have ended.
/// Aborts propagate as aborts: a truncated TLS stream resets the local socket, never a clean EOF.
final class GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Side { case mesh, local }

    private let side: Side
    private let stats: ConnectionStats
    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Once either side aborts, every further ending of this pair is an abort too: a graceful
    /// close after an abort would hand the other peer a clean end of stream.
    private var aborted = false

    private init(side: Side, stats: ConnectionStats) {
        self.side = side
        self.stats = stats
    }

    static func pair(stats: ConnectionStats) -> (mesh: GlueHandler, local: GlueHandler) {
        let mesh = GlueHandler(side: .mesh, stats: stats)
        let local = GlueHandler(side: .local, stats: stats)
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
        let bytes = unwrapInboundIn(data).readableBytes
        switch side {
        case .mesh: stats.bytesFromMesh += bytes
        case .local: stats.bytesToMesh += bytes
        }
        partner?.partnerWrite(data)
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

    /// Our side ended cleanly (aborts arrive through errorCaught first). NIO may go straight
    /// to inactive without an inputClosed event (EOF after our own write shutdown), so the
    /// partner still gets the graceful path: flush what is queued, then end its output.
    func channelInactive(context: ChannelHandlerContext) {
        if aborted {
            abortPair()
        } else {
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

    private func partnerWrite(_ data: NIOAny) {
        context?.write(data, promise: nil)
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

    /// Half-closes our channel once everything written so far has reached the socket. NIO
    /// escalates a half-close to a full close (dropping pending writes) when the input side has
    /// already seen EOF, so the ordering matters: an empty write's promise marks the point.
    private func partnerCloseOutput() {
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        }
    }

    /// Aborts both channels (each at most once).
    private func abortPair() {
        aborted = true
        partner?.aborted = true
        if let channel = partner?.context?.channel { Self.abort(channel) }
        if let channel = context?.channel { Self.abort(channel) }
    }

    /// Closes without a graceful ending: RST on plain TCP, no close_notify on TLS.
    static func abort(_ channel: Channel) {
        guard channel.isActive else { return }
        let finish = {
            channel.triggerUserOutboundEvent(TLSAbortRequest(), promise: nil)
            channel.close(promise: nil)
        }
        if let provider = channel as? SocketOptionProvider {
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in finish() }
        } else {
            finish()
        }
    }
}
