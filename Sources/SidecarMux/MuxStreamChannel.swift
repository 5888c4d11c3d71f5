import CNGHTTP2
import NIOConcurrencyHelpers
import NIOCore
import SidecarTLS

/// Outbound user event on a server-side stream: answer the CONNECT. 200 lets data flow; any
/// other status ends the stream (the destination refused it). Ignored on other channels.
package struct MuxStreamResponse: Sendable {
    package let status: Int
    package init(status: Int) { self.status = status }
}

/// Outbound user event on a server-side stream not yet answered: refuse it with
/// RST_STREAM(REFUSED_STREAM), which tells the client nothing was processed and the stream may
/// be retried on another connection (a connection being retired, a draining sidecar).
package struct MuxStreamRefusal: Sendable {
    package init() {}
}

/// Channels that are streams of a mux connection say which.
package protocol MuxStreamIdentifying {
    var muxStreamID: Int32 { get }
}

/// What a stream channel needs from the connection it rides on (same event loop).
protocol MuxStreamOwner: AnyObject {
    func streamHasOutput(_ stream: MuxStreamChannel)
    func streamConsumed(_ count: Int, on streamID: Int32)
    func streamReset(_ streamID: Int32, errorCode: UInt32)
    func streamRespond(_ stream: MuxStreamChannel, status: Int)
    /// `takeOutbound` ran during a send: finish promises and writability after it returns.
    func streamTouchedDuringSend(_ stream: MuxStreamChannel)
}

/// One HTTP/2 stream of a mux connection, as a NIO Channel: the handlers that work on a TLS
/// connection (staging, glue, the HTTP/1.1 L7 filter) work on a stream unchanged.
///
/// Reads are delivered only when asked for (autoRead or `read()`), and the peer's window is
/// credited only for what was delivered: a stream whose reader is slow holds back only itself.
/// Writes queue here until nghttp2 takes them as DATA frames; the channel turns unwritable above
/// `highWater` queued bytes, which is what stops the local side reading.
/// Half-close maps to END_STREAM both ways; an abort (or close of an unfinished stream) to
/// RST_STREAM, and a reset from the peer surfaces as an error, then close.
/// `@unchecked Sendable`: like NIO's own channels, its state is confined to its event loop.
final class MuxStreamChannel: Channel, ChannelCore, MuxOutboundSource, MuxStreamIdentifying, @unchecked Sendable {
    private enum Lifecycle { case idle, active, closed }

    static let highWater = 512 * 1024
    static let lowWater = 128 * 1024

    let eventLoop: EventLoop
    let parent: Channel?
    let allocator: ByteBufferAllocator
    private(set) var streamID: Int32 = 0
    private weak var owner: MuxStreamOwner?
    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>
    private var lifecycle = Lifecycle.idle
    private let flags: NIOLockedValueBox<(active: Bool, writable: Bool)>

    private var autoRead: Bool
    private var readPending = false
    private var inbound = CircularBuffer<ByteBuffer>()
    private var inboundBytes = 0
    private var inputEnded = false
    private var inputClosedDelivered = false

    private var unflushed: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var outbound = CircularBuffer<(ByteBuffer, EventLoopPromise<Void>?)>()
    private var outboundBytes = 0
    private var queuedBytes: Int { outboundBytes + unflushed.reduce(0) { $0 + $1.0.readableBytes } }
    private var outputEnded = false
    private var outputClosePromise: EventLoopPromise<Void>?
    private var finishedPromises: [EventLoopPromise<Void>] = []
    private var endOfStreamSent = false
    /// The session already closed the stream (END_STREAM both ways, or a reset).
    private var sessionClosed = false
    private var aborting = false
    private var suppressReset = false
    /// Closed as a channel, but what was written before the close is still being sent.
    private var flushingAfterClose = false
    /// Once END_STREAM is out after such a close, tell the peer to stop sending (nobody reads).
    private var resetAfterEndOfStream = false
    private var parentWritable = true

    init(parent: Channel, owner: MuxStreamOwner, autoRead: Bool) {
        self.parent = parent
        self.eventLoop = parent.eventLoop
        self.allocator = parent.allocator
        self.owner = owner
        self.autoRead = autoRead
        self.closePromise = parent.eventLoop.makePromise()
        self.flags = NIOLockedValueBox((false, true))
        self._pipeline = ChannelPipeline(channel: self)
    }

    // MARK: Channel

    var pipeline: ChannelPipeline { _pipeline }
    var muxStreamID: Int32 { streamID }
    var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    var localAddress: SocketAddress? { parent?.localAddress }
    var remoteAddress: SocketAddress? { parent?.remoteAddress }
    var isWritable: Bool { flags.withLockedValue { $0.writable } }
    var isActive: Bool { flags.withLockedValue { $0.active } }
    var _channelCore: ChannelCore { self }

    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        eventLoop.submit {
            if option is ChannelOptions.Types.AutoReadOption {
                self.setAutoRead(value as! Bool)
            }
            // Other socket options have no meaning on a stream; accepted and ignored.
        }
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        eventLoop.submit {
            if option is ChannelOptions.Types.AutoReadOption { return self.autoRead as! Option.Value }
            if option is ChannelOptions.Types.AllowRemoteHalfClosureOption { return true as! Option.Value }
            throw ChannelError.operationUnsupported
        }
    }

    private func setAutoRead(_ value: Bool) {
        let wasOff = !autoRead
        autoRead = value
        if value && wasOff && lifecycle == .active { pipeline.read() }
    }

    // MARK: Lifecycle, driven by the connection

    /// Registered and ready for handlers; not active until `activate`.
    func register() { pipeline.syncOperations.fireChannelRegistered() }

    /// Client streams get their id when the CONNECT is submitted, after the channel exists.
    func assign(streamID: Int32) { self.streamID = streamID }

    /// The stream was answered with a final non-200 response: it ends with that, not a reset.
    func answeredWithRefusal() { suppressReset = true }

    func activate() {
        guard lifecycle == .idle else { return }
        lifecycle = .active
        flags.withLockedValue { $0.active = true }
        pipeline.syncOperations.fireChannelActive()
        if autoRead { pipeline.read() }
        deliverInbound()
    }

    func received(_ data: ByteBuffer) {
        guard lifecycle != .closed else {
            owner?.streamConsumed(data.readableBytes, on: streamID)
            return
        }
        inboundBytes += data.readableBytes
        inbound.append(data)
    }

    /// END_STREAM arrived; delivered (as EOF) after the data before it.
    func receivedEnd() { inputEnded = true }

    /// The session removed the stream. Graceful (code 0): what is buffered is still delivered,
    /// then EOF, then the channel closes. A reset drops the rest and reports an error.
    func sessionClosed(errorCode: UInt32) {
        // RST_STREAM(NO_ERROR) before END_STREAM did not finish the stream: the peer's data
        // may be cut short, so it is a reset like any other, never an EOF.
        guard errorCode == NGHTTP2_NO_ERROR.rawValue, inputEnded else {
            // Like a TLS stream cut after some records: what arrived before the reset is passed
            // on, then the error (the glue turns it into an abort).
            cut(MuxError.streamReset(errorCode: errorCode), deliveringQueued: true)
            return
        }
        sessionEnded(MuxError.streamReset(errorCode: errorCode))
        guard lifecycle != .closed else { return }
        inputEnded = true
        failOutbound(MuxError.streamReset(errorCode: errorCode))
        deliverInbound()
        if lifecycle == .idle { finishClose(error: MuxError.connectionClosed) }
    }

    /// The connection under the stream ended: everything on it is cut.
    func connectionLost() { cut(MuxError.connectionClosed, deliveringQueued: false) }

    private func cut(_ error: MuxError, deliveringQueued: Bool) {
        sessionEnded(error)
        guard lifecycle != .closed else { return }
        if lifecycle == .active {
            if deliveringQueued { deliverQueued() }
            pipeline.syncOperations.fireErrorCaught(error)
        }
        finishClose(error: error)
    }

    /// The session has no stream any more: output still flushing after a close can't go out.
    private func sessionEnded(_ error: MuxError) {
        sessionClosed = true
        if flushingAfterClose {
            flushingAfterClose = false
            failOutbound(error)
        }
    }

    func parentWritabilityChanged(_ writable: Bool) {
        parentWritable = writable
        updateWritability()
    }

    // MARK: Inbound delivery

    /// Everything queued goes down the pipeline now, one read-complete after it; the peer's
    /// window is credited for what was delivered.
    private func deliverQueued() {
        guard !inbound.isEmpty else { return }
        var delivered = 0
        while lifecycle == .active, let chunk = inbound.popFirst() {
            delivered += chunk.readableBytes
            inboundBytes -= chunk.readableBytes
            pipeline.syncOperations.fireChannelRead(NIOAny(chunk))
        }
        owner?.streamConsumed(delivered, on: streamID)
        if lifecycle == .active { pipeline.syncOperations.fireChannelReadComplete() }
    }

    /// Passes queued data on if a read is pending (the connection calls this once per batch
    /// of input, so a 64 KB TLS record's worth of frames is one read and one flush downstream).
    func deliverInbound() {
        guard lifecycle == .active else { return }
        if readPending && !inbound.isEmpty {
            readPending = false
            deliverQueued()
            if autoRead && lifecycle == .active { pipeline.read() }
        }
        if lifecycle == .active && inbound.isEmpty && inputEnded && !inputClosedDelivered {
            inputClosedDelivered = true
            pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        if lifecycle == .active && sessionClosed && inputClosedDelivered { finishClose(error: nil) }
    }

    // MARK: MuxOutboundSource

    var outboundState: (queued: Int, ended: Bool) {
        guard lifecycle != .closed || flushingAfterClose else { return (0, false) }
        return (outboundBytes, outputEnded && unflushed.isEmpty)
    }

    func takeOutbound(_ count: Int, into buffer: inout ByteBuffer) {
        // nghttp2 already wrote the frame header for `count` bytes. If the queue was dropped
        // meanwhile (an abort; its RST_STREAM follows), fill with zeros so the framing holds.
        let missing = max(0, count - outboundBytes)
        var remaining = count - missing
        while remaining > 0, case (var chunk, let promise)? = outbound.popFirst() {
            if chunk.readableBytes <= remaining {
                remaining -= chunk.readableBytes
                buffer.writeBuffer(&chunk)
                if let promise { finishedPromises.append(promise) }
            } else {
                var slice = chunk.readSlice(length: remaining)!
                buffer.writeBuffer(&slice)
                remaining = 0
                outbound.prepend((chunk, promise))
            }
        }
        if missing > 0 { buffer.writeRepeatingByte(0, count: missing) }
        outboundBytes -= count - missing
        if outputEnded && outbound.isEmpty && unflushed.isEmpty { endOfStreamSent = true }
        owner?.streamTouchedDuringSend(self)
    }

    /// After a send: completes write promises, the half-close, and writability.
    func afterSend() {
        let promises = finishedPromises
        finishedPromises.removeAll()
        promises.forEach { $0.succeed() }
        if endOfStreamSent, let promise = outputClosePromise {
            outputClosePromise = nil
            promise.succeed()
        }
        if endOfStreamSent && flushingAfterClose {
            flushingAfterClose = false
            if resetAfterEndOfStream && !sessionClosed { owner?.streamReset(streamID, errorCode: NGHTTP2_NO_ERROR.rawValue) }
        }
        updateWritability()
    }

    private func updateWritability() {
        let queued = queuedBytes
        let current = isWritable
        let wanted = parentWritable && (current ? queued < Self.highWater : queued < Self.lowWater)
        guard wanted != current, lifecycle != .closed else { return }
        flags.withLockedValue { $0.writable = wanted }
        pipeline.syncOperations.fireChannelWritabilityChanged()
    }

    // MARK: ChannelCore

    func localAddress0() throws -> SocketAddress {
        guard let address = parent?.localAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    func remoteAddress0() throws -> SocketAddress {
        guard let address = parent?.remoteAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    func register0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard lifecycle != .closed, !outputEnded else {
            promise?.fail(lifecycle == .closed ? ChannelError.ioOnClosedChannel : ChannelError.outputClosed)
            return
        }
        let buffer = unwrapData(data, as: ByteBuffer.self)
        unflushed.append((buffer, promise))
        updateWritability()
    }

    func flush0() {
        guard lifecycle != .closed, !unflushed.isEmpty else { return }
        for (buffer, promise) in unflushed {
            guard buffer.readableBytes > 0 else {
                // nghttp2 never asks for zero bytes: an empty write is done once what was queued
                // before it is (NIO's HTTP encoders end a message with one).
                if let promise {
                    if let last = outbound.last {
                        if let earlier = last.1 {
                            earlier.futureResult.cascade(to: promise)
                        } else {
                            outbound[outbound.index(before: outbound.endIndex)].1 = promise
                        }
                    } else {
                        promise.succeed()
                    }
                }
                continue
            }
            outboundBytes += buffer.readableBytes
            outbound.append((buffer, promise))
        }
        unflushed.removeAll(keepingCapacity: true)
        owner?.streamHasOutput(self)
    }

    func read0() {
        guard lifecycle != .closed else { return }
        readPending = true
        deliverInbound()
    }

    func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard lifecycle != .closed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .output:
            guard !outputEnded else {
                // Ending output twice is harmless (the glue may do so on EOF and again on close).
                if let promise { outputClosePromise?.futureResult.cascade(to: promise) ?? promise.succeed() }
                return
            }
            flush0()
            outputEnded = true
            outputClosePromise = promise
            owner?.streamHasOutput(self)
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .all:
            if aborting || sessionClosed || streamID == 0 || lifecycle == .idle {
                if !sessionClosed && !suppressReset && streamID != 0 {
                    owner?.streamReset(streamID, errorCode: aborting ? NGHTTP2_CANCEL.rawValue : NGHTTP2_NO_ERROR.rawValue)
                }
                finishClose(error: error, promise: promise)
                return
            }
            // Like a TLS close: what was written still goes out, then END_STREAM.
            flush0()
            flushingAfterClose = true
            resetAfterEndOfStream = !suppressReset
            if !outputEnded {
                outputEnded = true
                owner?.streamHasOutput(self)
            }
            finishClose(error: error, promise: promise, keepingOutput: true)
            if endOfStreamSent { afterSend() }
        }
    }

    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        switch event {
        case is TLSAbortRequest:
            // An abort must reach the far side as a reset, never as a clean end of stream.
            aborting = true
            promise?.succeed()
            close0(error: ChannelError.ioOnClosedChannel, mode: .all, promise: nil)
        case let response as MuxStreamResponse:
            owner?.streamRespond(self, status: response.status)
            promise?.succeed()
        case is MuxStreamRefusal:
            if !sessionClosed && streamID != 0 { owner?.streamReset(streamID, errorCode: NGHTTP2_REFUSED_STREAM.rawValue) }
            suppressReset = true
            promise?.succeed()
            close0(error: ChannelError.ioOnClosedChannel, mode: .all, promise: nil)
        default:
            promise?.fail(ChannelError.operationUnsupported)
        }
    }

    func channelRead0(_ data: NIOAny) {}
    func errorCaught0(error: Error) {}

    // MARK: Closing

    private func failOutbound(_ error: Error) {
        let pending = Array(outbound) + unflushed
        outbound.removeAll()
        unflushed.removeAll()
        outboundBytes = 0
        pending.forEach { $0.1?.fail(error) }
        outputClosePromise?.fail(error)
        outputClosePromise = nil
    }

    private func finishClose(error: Error?, promise: EventLoopPromise<Void>? = nil, keepingOutput: Bool = false) {
        guard lifecycle != .closed else {
            promise?.succeed()
            return
        }
        let wasActive = lifecycle == .active
        lifecycle = .closed
        flags.withLockedValue { $0 = (false, false) }
        if !keepingOutput {
            flushingAfterClose = false
            failOutbound(ChannelError.ioOnClosedChannel)
        }
        finishedPromises.forEach { $0.succeed() }
        finishedPromises.removeAll()
        // Undelivered data still holds connection window.
        owner?.streamConsumed(inboundBytes, on: streamID)
        inbound.removeAll()
        inboundBytes = 0
        promise?.succeed()
        if wasActive { pipeline.syncOperations.fireChannelInactive() }
        pipeline.syncOperations.fireChannelUnregistered()
        eventLoop.execute {
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed()
        }
    }
}
