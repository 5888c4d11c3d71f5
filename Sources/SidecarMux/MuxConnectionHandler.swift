import CNGHTTP2
import NIOCore

/// HTTP/2 over an established (TLS) channel, carrying one tunnel per stream.
///
/// Client role: `openStream` sends a CONNECT and resolves with the stream's channel once the
/// destination answers 200. Server role: every CONNECT becomes a stream channel handed to
/// `initializer`, which answers it (`MuxStreamResponse`) once it has decided.
/// Everything runs on the connection's event loop.
///
/// Also in: MuxConnectionHandler+State.swift (its lifecycle), +Liveness.swift (idle close,
/// keepalive), +StreamOwner.swift (what its streams call), +Flush.swift (when frames reach
/// the socket); the value types it works with in MuxSettings.swift.
package final class MuxConnectionHandler: ChannelDuplexHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    package enum Role {
        case client
        /// Installs the stream's handlers (synchronously, on the event loop).
        case server(initializer: (Channel, MuxStreamRequest) -> Void)
    }

    /// Frames taken from nghttp2 at a time while the socket keeps up; flushed once this much
    /// is written (and at the end of the event loop's turn).
    static let sendChunk = 256 * 1024

    let role: Role
    let settings: MuxSettings
    /// Our side of the connection's life (MuxConnectionHandler+State.swift).
    private(set) var state = State.active
    /// The peer's GOAWAY: arrives independently of our own state (also while we drain), so it
    /// is kept beside `state` rather than in it.
    private var goawayReceived = false
    /// Our output is being shut down (close_notify after what is queued). A latch on that one
    /// action, orthogonal to `state`: it can happen while serving (the peer's EOF without
    /// streams, nghttp2 ending the session) and a drain may still begin after it.
    private var closingGracefully = false
    private(set) var session: NGHTTP2Session?
    private(set) var context: ChannelHandlerContext?
    private(set) var eventLoop: EventLoop?
    private(set) var streams: [Int32: MuxStreamChannel] = [:]
    private var opening: [Int32: EventLoopPromise<Channel>] = [:]
    var touchedDuringSend: [MuxStreamChannel] = []
    /// Re-entrancy guards of `pump` and of input handling, not lifecycle.
    private var pumping = false
    private var pumpAgain = false
    private var processingInput = false
    /// Frames written but not yet flushed: flushed once they reach `sendChunk`, else at the end
    /// of the event loop's turn (MuxConnectionHandler+Flush.swift), which is then scheduled.
    var unflushedBytes = 0
    var flushScheduled = false
    var idleClose: Scheduled<Void>?
    var keepalive: RepeatedTask?
    private(set) var lastInput = NIODeadline.uptimeNanoseconds(0)
    /// When our unanswered keepalive PING went out.
    var pingSent: NIODeadline?
    /// The receive windows of our streams (MuxConnectionHandler+WindowTuning.swift), and the
    /// monotonic nanoseconds it is fed (a test sets its own).
    var windowTuning: ReceiveWindowTuning
    var clock: () -> Int64 = { Int64(NIODeadline.now().uptimeNanoseconds) }
    /// Called when the peer broke the protocol and the connection ends for it (for logs/audit).
    package var onProtocolError: ((Error) -> Void)?
    /// Called before a connection whose peer went silent (no answer to a keepalive PING) is
    /// closed, with the seconds since anything arrived.
    package var onUnresponsivePeer: ((Double) -> Void)?

    package init(role: Role, settings: MuxSettings) {
        self.role = role
        self.settings = settings
        self.windowTuning = ReceiveWindowTuning(limits: .init(initialWindow: settings.streamWindow,
                                                              maximumWindow: max(settings.streamWindow, settings.maximumStreamWindow),
                                                              samplesPerDoubling: settings.windowSamplesPerDoubling))
    }

    /// Streams currently open (including CONNECTs awaiting their answer).
    package var openStreams: Int { streams.count }

    /// The most streams this connection may carry at once: ours and the peer's limit.
    package var streamLimit: Int {
        min(settings.maxConcurrentStreams, session?.remoteMaxConcurrentStreams ?? settings.maxConcurrentStreams)
    }

    /// Whether a new stream may be opened here now.
    package var acceptsNewStreams: Bool {
        state.isActive && !goawayReceived && session != nil && streams.count < streamLimit
    }

    /// Whether the connection is finished with for new work (it may still carry streams).
    package var isRetired: Bool { !state.isActive || goawayReceived }

    // MARK: Handler lifecycle

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        do {
            let sessionSettings = NGHTTP2Session.Settings(maxConcurrentStreams: settings.maxConcurrentStreams,
                                                          streamWindow: settings.streamWindow,
                                                          connectionWindow: settings.connectionWindow)
            session = try NGHTTP2Session(role: role.isClient ? .client : .server, settings: sessionSettings,
                                         allocator: context.channel.allocator)
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        probeRoundTrip()
        if context.channel.isActive { pump() }
        lastInput = context.eventLoop.now
        armIdleClose()
        armKeepalive()
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        connectionEnded()
        self.context = nil
    }

    package func channelActive(context: ChannelHandlerContext) {
        pump()
        context.fireChannelActive()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        connectionEnded()
        context.fireChannelInactive()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session, !state.isClosed else { return }
        lastInput = context.eventLoop.now
        // Nothing is sent (and the connection is not judged finished) until every event of
        // this input has been handled: a stream's data must reach it before its close does.
        processingInput = true
        var failure: Error?
        do {
            try session.receive(unwrapInboundIn(data))
        } catch {
            failure = error
        }
        handle(session.takeEvents())
        processingInput = false
        pump() // Also sends the GOAWAY nghttp2 queued for a violation.
        if let failure {
            onProtocolError?(failure)
            context.fireErrorCaught(failure)
            context.close(promise: nil)
        }
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        pump()
        context.fireChannelReadComplete()
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        for stream in streams.values { stream.parentWritabilityChanged(writable) }
        if writable { pump() }
        context.fireChannelWritabilityChanged()
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The peer ended the TLS stream. Without streams that is its graceful close; with
            // streams still open they can receive nothing more: cut them.
            if streams.isEmpty { closeGracefully() } else { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    package func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is MuxGracefulShutdown else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        beginDraining()
        promise?.succeed()
    }

    // MARK: Streams

    /// Client: a new tunnel to `authority`, resolved once the destination answered 200.
    package func openStream(authority: String) -> EventLoopFuture<Channel> {
        guard let eventLoop else { preconditionFailure("openStream before the mux handler joined a pipeline") }
        let promise = eventLoop.makePromise(of: Channel.self)
        guard let context, let session, acceptsNewStreams else {
            promise.fail(MuxError.streamRefused("connection is not accepting new streams"))
            return promise.futureResult
        }
        let stream = MuxStreamChannel(parent: context.channel, owner: self, autoRead: false)
        stream.register()
        do {
            let id = try session.submitConnect(authority: authority, source: stream)
            stream.assign(streamID: id)
            streams[id] = stream
            opening[id] = promise
            disarmIdleClose()
        } catch {
            promise.fail(error)
            return promise.futureResult
        }
        pump()
        return promise.futureResult
    }

    /// GOAWAY; the connection closes by itself once its last stream is done. A server first
    /// announces it (streams already on their way are still served), then names the last stream
    /// it processed a second later; a client refusing anything new is the whole story.
    package func beginDraining() {
        guard case .active = state, let context else { return }
        if role.isClient {
            state = .draining
            session?.goAway()
        } else {
            state = .announcedShutdown
            session?.announceShutdown()
            context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { [weak self] in
                guard let self, case .announcedShutdown = self.state else { return }
                self.session?.goAway()
                self.state = .draining
                self.pump()
                self.closeIfFinished()
            }
        }
        pump()
        closeIfFinished()
    }

    /// A connection told to go away (either way) closes once its last stream is done.
    private func closeIfFinished() {
        guard context != nil, streams.isEmpty else { return }
        switch state {
        case .draining:
            closeGracefully()
        case .active, .announcedShutdown:
            if goawayReceived { closeGracefully() }
        case .closed:
            return
        }
    }

    /// Ends the connection after everything already written has reached the socket: the last
    /// DATA and END_STREAM frames may still be queued when the last stream closes, and a full
    /// close would drop them (the peer would see a truncated stream). close_notify follows
    /// them; the TLS handler closes fully once the peer's arrives (or 10 s later regardless).
    private func closeGracefully() {
        guard let context, !closingGracefully else { return }
        closingGracefully = true
        if unflushedBytes > 0 { flushNow(context) } // close_notify must follow them
        context.close(mode: .output, promise: nil)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(10)) { [weak self] in self?.context?.close(promise: nil) }
    }

    private func handle(_ events: [NGHTTP2Session.Event]) {
        guard let context else { return }
        var received: [MuxStreamChannel] = []
        defer {
            // Delivered once per batch, after all of it is queued.
            for stream in received {
                stream.deliverInbound()
                noteReaderBehind(stream)
            }
        }
        for event in events {
            switch event {
            case .request(let id, let headers):
                accept(streamID: id, headers: headers, context: context)
            case .response(let id, let status):
                guard let promise = opening.removeValue(forKey: id), let stream = streams[id] else { continue }
                if status == 200 {
                    stream.parentWritabilityChanged(context.channel.isWritable)
                    stream.activate()
                    promise.succeed(stream)
                } else {
                    promise.fail(MuxError.connectRejected(status: status))
                    stream.close(promise: nil)
                }
            case .data(let id, let bytes):
                if let stream = streams[id] {
                    tuneWindow(received: bytes.readableBytes, on: id)
                    stream.received(bytes)
                    if received.last !== stream { received.append(stream) }
                } else {
                    session?.consumed(bytes.readableBytes, on: id)
                }
            case .endOfInput(let id):
                if let stream = streams[id] {
                    stream.receivedEnd()
                    if received.last !== stream { received.append(stream) }
                }
            case .closed(let id, let errorCode):
                windowTuning.closed(id)
                guard let stream = streams.removeValue(forKey: id) else { continue }
                defer { armIdleClose() }
                if let promise = opening.removeValue(forKey: id) {
                    // Never processed by the peer (REFUSED_STREAM, GOAWAY): safe to try elsewhere.
                    promise.fail(errorCode == NGHTTP2_REFUSED_STREAM.rawValue
                                 ? MuxError.streamRefused("refused by the destination") : MuxError.streamReset(errorCode: errorCode))
                    stream.connectionLost()
                } else {
                    stream.sessionClosed(errorCode: errorCode)
                }
            case .goaway:
                goawayReceived = true
            case .pingAcknowledged(let tag):
                tuneWindows(acknowledged: tag)
            }
        }
        closeIfFinished()
    }

    private func accept(streamID: Int32, headers: [(name: String, value: String)], context: ChannelHandlerContext) {
        guard case .server(let initializer) = role, let session else { return }
        let method = headers.first { $0.name == ":method" }?.value
        guard method == "CONNECT", let authority = headers.first(where: { $0.name == ":authority" })?.value else {
            // Only tunnels ride this connection.
            session.submitResponse(streamID: streamID, status: 405, source: nil)
            return
        }
        let stream = MuxStreamChannel(parent: context.channel, owner: self, autoRead: true)
        streams[streamID] = stream
        disarmIdleClose()
        stream.assign(streamID: streamID)
        stream.register()
        stream.parentWritabilityChanged(context.channel.isWritable)
        initializer(stream, MuxStreamRequest(streamID: streamID, authority: authority))
        stream.activate()
    }

    private func connectionEnded() {
        guard !state.isClosed else { return }
        disarmIdleClose()
        keepalive?.cancel()
        keepalive = nil
        state = .closed(wasDraining: state.hasBegunDraining)
        let lost = streams
        streams.removeAll()
        let pending = opening
        opening.removeAll()
        pending.values.forEach { $0.fail(MuxError.connectionClosed) }
        lost.values.forEach { $0.connectionLost() }
    }

    // MARK: Output

    /// Writes what nghttp2 has to send, in chunks, while the channel is writable. While input
    /// is being handled, frames still go out at once (a reply written before an abort must
    /// precede its RST_STREAM, as on a TLS connection), but events are left for the input's
    /// handling to finish first.
    func pump() {
        guard let context, let session, !state.isClosed else { return }
        guard !pumping else {
            pumpAgain = true
            return
        }
        pumping = true
        defer { pumping = false }
        repeat {
            pumpAgain = false
            if !processingInput {
                let events = session.takeEvents()
                if !events.isEmpty { handle(events) }
            }
            while context.channel.isWritable && session.wantsToWrite {
                let chunk: OutboundFrames
                do {
                    chunk = try session.send(limit: Self.sendChunk)
                } catch {
                    context.fireErrorCaught(error)
                    context.close(promise: nil)
                    return
                }
                let touched = touchedDuringSend
                touchedDuringSend.removeAll(keepingCapacity: true)
                // Flushed per full chunk: TLS encrypts it at once and the socket's writability
                // (checked above) can stop the pump. What is framed but not yet encrypted is held
                // twice at the flush (frames, then ciphertext): flushed every 1 MiB, the sending
                // side of 4-stream bulk peaked 5 MiB higher, for no gain in MB/s or CPU per GiB.
                // Smaller sends (a request, control frames) wait for the end of the turn.
                chunk.forEach { context.write(wrapOutboundOut($0), promise: nil) }
                unflushedBytes += chunk.byteCount
                if unflushedBytes >= Self.sendChunk { flushNow(context) }
                // Sending can end streams too (our END_STREAM after theirs).
                if !processingInput {
                    let events = session.takeEvents()
                    if !events.isEmpty { handle(events) }
                }
                touched.forEach { $0.afterSend() }
                if chunk.isEmpty { break }
            }
            // Inside the loop: a flush made now can reach back (a write promise completed, a
            // writability change) and ask for another pass, which must not be lost.
            if !pumpAgain && unflushedBytes > 0 { flushAtEndOfTurn(context) }
        } while pumpAgain
        if !processingInput && !session.isAlive {
            // nghttp2 ended the session itself (a GOAWAY it sent for a violation), not a drain.
            if !state.hasBegunDraining && !goawayReceived { onProtocolError?(MuxError.protocolViolation("session terminated by nghttp2")) }
            closeGracefully()
        }
    }
}

extension MuxConnectionHandler.Role {
    var isClient: Bool { if case .client = self { return true }; return false }
}
