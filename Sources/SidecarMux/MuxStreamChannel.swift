import CNGHTTP2
import NIOConcurrencyHelpers
import NIOCore
import SidecarTLS

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
///
/// Also in: MuxStreamChannel+State.swift (its lifecycle types), +ChannelCore.swift (options,
/// addresses, unsupported operations); the events it takes in MuxStreamEvents.swift.
final class MuxStreamChannel: Channel, ChannelCore, MuxOutboundSource, MuxStreamIdentifying, @unchecked Sendable {
    static let highWater = 512 * 1024
    static let lowWater = 128 * 1024

    let eventLoop: EventLoop
    let parent: Channel?
    let allocator: ByteBufferAllocator
    private(set) var streamID: Int32 = 0
    private weak var owner: MuxStreamOwner?
    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>
    private var state = State.idle
    /// `isActive` and `isWritable` for any thread: mirrors of `state` and of the writability.
    private let flags: NIOLockedValueBox<(active: Bool, writable: Bool)>

    /// The AutoRead option: a setting, not lifecycle.
    private(set) var autoRead: Bool
    /// A read() waits for data: backpressure, whatever the lifecycle.
    private var readPending = false
    private(set) var inbound = StreamInbound()
    private var input = InputHalf.open

    private var unflushed: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private(set) var outbound = StreamOutbound()
    private var queuedBytes: Int { outbound.bytes + unflushed.reduce(0) { $0 + $1.0.readableBytes } }
    private var output = OutputHalf.open
    private var finishedPromises: [EventLoopPromise<Void>] = []
    /// The session already closed the stream (END_STREAM both ways, or a reset). The stream's
    /// life in nghttp2, apart from the channel's: it may end while buffered data still awaits a
    /// read, and the channel may close while the stream still flushes.
    private var sessionClosed = false
    /// An abort was asked for: any close from now on (one nested in it too) resets with CANCEL.
    /// An intent that can come at any point of the lifecycle.
    private var aborting = false
    /// Answered with a final non-200 or refused: it ends with that, never a reset of ours. How
    /// the stream was answered, not a point of its lifecycle.
    private var suppressReset = false
    /// The connection's writability, one input of ours.
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

    func setAutoRead(_ value: Bool) {
        let wasOff = !autoRead
        autoRead = value
        if value && wasOff && state.isActive { pipeline.read() }
    }

    // MARK: Lifecycle, driven by the connection

    /// Registered and ready for handlers; not active until `activate`.
    func register() { pipeline.syncOperations.fireChannelRegistered() }

    /// Client streams get their id when the CONNECT is submitted, after the channel exists.
    func assign(streamID: Int32) { self.streamID = streamID }

    /// The stream was answered with a final non-200 response: it ends with that, not a reset.
    func answeredWithRefusal() { suppressReset = true }

    func activate() {
        guard state.isIdle else { return }
        state = .active(flushing: nil)
        flags.withLockedValue { $0.active = true }
        pipeline.syncOperations.fireChannelActive()
        if autoRead { pipeline.read() }
        deliverInbound()
    }

    func received(_ data: ByteBuffer) {
        guard !state.isClosed else {
            owner?.streamConsumed(data.readableBytes, on: streamID)
            return
        }
        inbound.append(data, allocator: allocator)
    }

    /// END_STREAM arrived; delivered (as EOF) after the data before it.
    func receivedEnd() { input.end() }

    /// The session removed the stream. Graceful (code 0): what is buffered is still delivered,
    /// then EOF, then the channel closes. A reset drops the rest and reports an error.
    func sessionClosed(errorCode: UInt32) {
        // RST_STREAM(NO_ERROR) before END_STREAM did not finish the stream: the peer's data
        // may be cut short, so it is a reset like any other, never an EOF.
        guard errorCode == NGHTTP2_NO_ERROR.rawValue, input.isEnded else {
            // Like a TLS stream cut after some records: what arrived before the reset is passed
            // on, then the error (the glue turns it into an abort).
            cut(MuxError.streamReset(errorCode: errorCode), deliveringQueued: true)
            return
        }
        sessionEnded(MuxError.streamReset(errorCode: errorCode))
        guard !state.isClosed else { return }
        input.end()
        failOutbound(MuxError.streamReset(errorCode: errorCode))
        deliverInbound()
        if state.isIdle { finishClose(error: MuxError.connectionClosed) }
    }

    /// The connection under the stream ended: everything on it is cut.
    func connectionLost() { cut(MuxError.connectionClosed, deliveringQueued: false) }

    private func cut(_ error: MuxError, deliveringQueued: Bool) {
        sessionEnded(error)
        guard !state.isClosed else { return }
        if state.isActive {
            if deliveringQueued { deliverQueued() }
            pipeline.syncOperations.fireErrorCaught(error)
        }
        finishClose(error: error, reported: true)
    }

    /// The session has no stream any more: output still flushing after a close can't go out.
    private func sessionEnded(_ error: MuxError) {
        sessionClosed = true
        if state.flushing != nil {
            state.flushing = nil
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
        while state.isActive, let chunk = inbound.popFirst() {
            delivered += chunk.readableBytes
            pipeline.syncOperations.fireChannelRead(NIOAny(chunk))
        }
        owner?.streamConsumed(delivered, on: streamID)
        if state.isActive { pipeline.syncOperations.fireChannelReadComplete() }
    }

    /// Passes queued data on if a read is pending (the connection calls this once per batch
    /// of input, so a 64 KB TLS record's worth of frames is one read and one flush downstream).
    func deliverInbound() {
        guard state.isActive else { return }
        if readPending && !inbound.isEmpty {
            readPending = false
            deliverQueued()
            if autoRead && state.isActive { pipeline.read() }
        }
        if state.isActive && inbound.isEmpty && input == .ended {
            input = .endDelivered
            pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        if state.isActive && sessionClosed && input == .endDelivered { finishClose(error: nil) }
    }

    // MARK: MuxOutboundSource

    var outboundState: (queued: Int, ended: Bool) {
        guard !state.isClosed || state.flushing != nil else { return (0, false) }
        return (outbound.bytes, output.isEnded && unflushed.isEmpty)
    }

    func canSend(_ count: Int) -> Bool { !aborting && count <= outbound.bytes }

    func takeOutbound(_ count: Int, endsStream: Bool, into frames: inout OutboundFrames) {
        // The frame header for `count` bytes is written; `canSend` has just checked they are queued.
        assert(count <= outbound.bytes, "a DATA frame larger than the queue")
        outbound.take(count, into: &frames, finished: &finishedPromises)
        // The frame's own flag, not the queue: a frame prepared before the output ended (held
        // by a full send chunk) may go out after it with no END_STREAM, and marking the end
        // taken then would let a close's RST_STREAM(NO_ERROR) overtake the real END_STREAM.
        if endsStream { output.endOfStreamTaken() }
        owner?.streamTouchedDuringSend(self)
    }

    /// After a send: completes write promises, the half-close, and writability.
    func afterSend() {
        let promises = finishedPromises
        finishedPromises.removeAll()
        promises.forEach { $0.succeed() }
        if output.endOfStreamSent, let promise = output.closePromise {
            output.closePromise = nil
            promise.succeed()
        }
        if output.endOfStreamSent, let flush = state.flushing {
            state.flushing = nil
            if flush.resetAfterEndOfStream && !sessionClosed { owner?.streamReset(streamID, errorCode: NGHTTP2_NO_ERROR.rawValue) }
        }
        updateWritability()
    }

    private func updateWritability() {
        let queued = queuedBytes
        let current = isWritable
        let wanted = parentWritable && (current ? queued < Self.highWater : queued < Self.lowWater)
        guard wanted != current, !state.isClosed else { return }
        flags.withLockedValue { $0.writable = wanted }
        pipeline.syncOperations.fireChannelWritabilityChanged()
    }

    // MARK: ChannelCore

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !state.isClosed, !output.isEnded else {
            promise?.fail(state.isClosed ? ChannelError.ioOnClosedChannel : ChannelError.outputClosed)
            return
        }
        let buffer = unwrapData(data, as: ByteBuffer.self)
        unflushed.append((buffer, promise))
        updateWritability()
    }

    func flush0() {
        guard !state.isClosed, !unflushed.isEmpty else { return }
        for (buffer, promise) in unflushed {
            guard buffer.readableBytes > 0 else {
                // nghttp2 never asks for zero bytes: an empty write is done once what was queued
                // before it is (NIO's HTTP encoders end a message with one).
                if let promise, !outbound.attachToLast(promise) { promise.succeed() }
                continue
            }
            outbound.append(buffer, promise: promise, allocator: allocator)
        }
        unflushed.removeAll(keepingCapacity: true)
        owner?.streamHasOutput(self)
    }

    func read0() {
        guard !state.isClosed else { return }
        readPending = true
        deliverInbound()
    }

    func close0(error: Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard !state.isClosed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .output:
            guard !output.isEnded else {
                // Ending output twice is harmless (the glue may do so on EOF and again on close).
                if let promise { output.closePromise?.futureResult.cascade(to: promise) ?? promise.succeed() }
                return
            }
            flush0()
            output.end()
            output.closePromise = promise
            owner?.streamHasOutput(self)
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .all:
            if aborting || sessionClosed || streamID == 0 || state.isIdle {
                if !sessionClosed && !suppressReset && streamID != 0 {
                    owner?.streamReset(streamID, errorCode: aborting ? NGHTTP2_CANCEL.rawValue : NGHTTP2_NO_ERROR.rawValue)
                }
                finishClose(error: error, promise: promise)
                return
            }
            // Like a TLS close: what was written still goes out, then END_STREAM.
            flush0()
            state.flushing = State.Flush(resetAfterEndOfStream: !suppressReset)
            if !output.isEnded {
                output.end()
                owner?.streamHasOutput(self)
            }
            finishClose(error: error, promise: promise, keepingOutput: true)
            if output.endOfStreamSent { afterSend() }
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

    // MARK: Closing

    private func failOutbound(_ error: Error) {
        let pending = outbound.removeAll() + unflushed.compactMap(\.1)
        unflushed.removeAll()
        pending.forEach { $0.fail(error) }
        // A half-close whose END_STREAM went out succeeded, even if the stream closed (both
        // ends done) before the send returned: failing it made the glue fall back to a full
        // close, which dropped the peer's data still waiting for a slow reader.
        if output.endOfStreamSent { output.closePromise?.succeed() } else { output.closePromise?.fail(error) }
        output.closePromise = nil
    }

    /// `reported`: the cause already went down the pipeline as an error.
    private func finishClose(error: Error?, promise: EventLoopPromise<Void>? = nil, keepingOutput: Bool = false,
                             reported: Bool = false) {
        guard !state.isClosed else {
            promise?.succeed()
            return
        }
        let wasActive = state.isActive
        // Closing without keeping the output drops any flush: what is queued fails below.
        state = .closed(flushing: keepingOutput ? state.flushing : nil)
        flags.withLockedValue { $0 = (false, false) }
        if !keepingOutput { failOutbound(ChannelError.ioOnClosedChannel) }
        finishedPromises.forEach { $0.succeed() }
        finishedPromises.removeAll()
        // Undelivered data still holds connection window.
        owner?.streamConsumed(inbound.bytes, on: streamID)
        let discarded = !inbound.isEmpty
        inbound.removeAll()
        promise?.succeed()
        // The reader never gets that data: whoever relays this stream must see a cut (the glue
        // aborts the other side), never a clean end of a truncated stream.
        if wasActive && discarded && !reported { pipeline.syncOperations.fireErrorCaught(MuxError.unreadInputDiscarded) }
        if wasActive { pipeline.syncOperations.fireChannelInactive() }
        pipeline.syncOperations.fireChannelUnregistered()
        eventLoop.execute {
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed()
        }
    }
}
