import NIOCore
import SidecarMux

/// Head of a plaintext socket to the local app: keeps what queues for an app that has stopped
/// reading dense.
///
/// NIO queues every write as an entry of its own, and the write watermark that stops the glue
/// counts payload bytes only. A mesh peer that sends one byte per TLS record (or per mux DATA
/// frame) toward a stalled app queued one entry per byte up to the watermark, each holding a
/// buffer: 20,000 such records grew a storage sidecar by 150 MiB in raw mode (each entry held
/// a 64 KiB decrypt buffer), 300,000 DATA frames by 374 MiB. Here, a small write that would
/// join a queue is copied into one gathering buffer instead, which goes down when it reaches
/// `smallWrite` bytes, when an ungathered write must follow it, or on a flush once the short piece
/// passed down before it has been written. A larger write filling a quarter or less of its
/// buffer is copied to its size when the socket has a backlog. A small write about the size
/// of its buffer may skip the check up to `uncheckedLimit` times. So a stalled socket's queue
/// holds at most two entries per `smallWrite` bytes plus ten, and its buffers hold at most
/// about four times its bytes.
///
/// On a socket that keeps up, nothing is copied but the second and later small writes of one
/// flush: a small write passes as it is when the queue was empty at the last flush (one
/// keep-alive request, one decrypt read).
final class PendingWriteCompactor: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// Writes shorter than this are gathered while the socket has a queue.
    static let smallWrite = 4096

    /// What is known of the socket's queue (NIO's pending writes, flushed or not).
    private enum Queue {
        /// Empty: the last check found nothing buffered, and nothing passed down since.
        case empty
        /// Something was passed down since the last flush, or a check found bytes buffered.
        case nonEmpty
        /// A flush happened since something was passed down: checked on the next small write.
        case unknown
    }

    private var queue = Queue.empty
    /// Bytes passed down since the last flush.
    private var bytesThisCycle = 0
    /// Small writes passed without a check since one last found the queue empty.
    private var uncheckedSinceEmpty = 0
    static let uncheckedLimit = 8
    /// Small writes not yet passed down, in order (owned copies).
    private var gathered: ByteBuffer?
    /// A gathered buffer shorter than `smallWrite` was passed down and is not yet written:
    /// the next one waits for it, so a stalled socket holds at most one such entry.
    private var gatheredInFlight = false
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// Nothing removes it before the channel closes (when pending writes fail anyway), so
    /// what is gathered then goes with them.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        gathered = nil
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let io = unwrapOutboundIn(data)
        guard case .byteBuffer(var buffer) = io else {
            passGathered(context, tracked: false)
            return pass(context, data, bytes: io.readableBytes, promise: promise)
        }
        let count = buffer.readableBytes
        let fillsAQuarter = buffer.fillsAQuarterOfItsStorage
        if promise == nil, count < Self.smallWrite {
            if gathered == nil && queueIsEmpty(context, unchecked: fillsAQuarter) {
                pass(context, data, bytes: count, promise: nil)
                return
            }
            gather(&buffer, context: context)
            return
        }
        // A larger write, or one whose completion someone awaits: after what is gathered, in
        // order (that piece needs no tracking: another entry follows it).
        passGathered(context, tracked: false)
        if count > 0, !fillsAQuarter, socketBacklogged(context) {
            // A quarter or less of its buffer (a 4 KiB record alone in a 64 KiB decrypt
            // buffer): queued, it would hold all of it. Copied to its size.
            pass(context, wrapOutboundOut(.byteBuffer(buffer.copiedToSize(allocator: context.channel.allocator))), bytes: count,
                 promise: promise)
            return
        }
        pass(context, data, bytes: count, promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        if !gatheredInFlight { passGathered(context, tracked: true) }
        if case .nonEmpty = queue { queue = .unknown }
        bytesThisCycle = 0
        context.flush()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // Everything written before a close goes before it (a write shutdown waits for it).
        if passGathered(context, tracked: false) { context.flush() }
        context.close(mode: mode, promise: promise)
    }

    // MARK: -

    private func gather(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        if gathered == nil {
            gathered = context.channel.allocator.buffer(capacity: Self.smallWrite)
        }
        gathered!.writeBuffer(&buffer)
        // Full size: an entry like any large write, with no need to wait for the one before.
        if gathered!.readableBytes >= Self.smallWrite { passGathered(context, tracked: false) }
    }

    /// Passes down what is gathered. A tracked piece (passed on a flush) makes the next wait
    /// until it is written; only one is tracked at a time, so at most one short piece waits
    /// in the queue that no larger entry follows. Returns whether anything was passed.
    @discardableResult
    private func passGathered(_ context: ChannelHandlerContext, tracked: Bool) -> Bool {
        guard let buffer = gathered else { return false }
        gathered = nil
        var written: EventLoopPromise<Void>?
        if tracked {
            gatheredInFlight = true
            written = context.eventLoop.makePromise(of: Void.self)
            written!.futureResult.assumeIsolated().whenComplete { [self] _ in gatheredWritten() }
        }
        pass(context, wrapOutboundOut(.byteBuffer(buffer)), bytes: buffer.readableBytes, promise: written)
        return true
    }

    /// The socket took the tracked piece (or failed it, closing): what gathered meanwhile goes.
    private func gatheredWritten() {
        gatheredInFlight = false
        guard let context, gathered != nil else { return }
        flush(context: context)
    }

    /// `bytes`: the write's, which a backlog check counts as this flush cycle's.
    private func pass(_ context: ChannelHandlerContext, _ data: NIOAny, bytes: Int, promise: EventLoopPromise<Void>?) {
        queue = .nonEmpty
        bytesThisCycle += bytes
        context.write(data, promise: promise)
    }

    /// What NIO holds for the socket, flushed or not. A channel that cannot say counts as
    /// backed up: the caller then gathers or copies, which is safe either way.
    private func bufferedBytes(_ context: ChannelHandlerContext) -> Int {
        (try? context.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? Int.max
    }

    /// Whether NIO holds no write for the socket. Checked at most once per flush, and only
    /// when a small write comes.
    ///
    /// `unchecked`: the write is about the size of its buffer (a mux payload is), so a few of
    /// them may go down without asking: asking NIO costs ~2K instructions, 3 % of a keep-alive
    /// exchange through the storage sidecar (callgrind), while a stalled socket can gain at most
    /// `uncheckedLimit` such entries before a check turns gathering on.
    private func queueIsEmpty(_ context: ChannelHandlerContext, unchecked: Bool) -> Bool {
        if case .unknown = queue {
            if unchecked && uncheckedSinceEmpty < Self.uncheckedLimit {
                uncheckedSinceEmpty += 1
                return true
            }
            let buffered = bufferedBytes(context)
            queue = buffered == 0 ? .empty : .nonEmpty
            if buffered == 0 { uncheckedSinceEmpty = 0 }
        }
        if case .empty = queue { return true }
        return false
    }

    /// Whether NIO holds more than what went down since the last flush: writes of this flush
    /// cycle do not count, as a socket that keeps up takes them with the flush and nothing
    /// needs copying. Asked for each large write filling a quarter or less of its buffer (in
    /// raw bulk, about one per socket read).
    private func socketBacklogged(_ context: ChannelHandlerContext) -> Bool {
        bufferedBytes(context) > bytesThisCycle
    }
}
