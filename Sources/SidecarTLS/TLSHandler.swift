import NIOCore
import SidecarModel

/// TLS over OpenSSL for one channel, either role.
///
/// Ciphertext never piles up here: everything OpenSSL produces is written to the channel at once,
/// so channel writability (and the glue's withheld reads) is the backpressure. Plaintext writes
/// are held only between `write` and `flush`, and leave in full 16 KB records (RecordPacker).
package final class TLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    enum State {
        case idle
        case handshaking
        /// Each direction closes independently: input on the peer's close_notify, output on ours.
        case open(inputOpen: Bool, outputOpen: Bool)
        case closed
    }

    /// Who the peer must be and how to check it.
    private enum Peer {
        case mesh(TLSContext, expectedPeer: SPIFFEID?, sessionKey: String?)
        case httpsServer(HTTPSClientContext, serverName: String)
    }

    private let peer: Peer
    private let configuration: TLSHandlerConfiguration
    private var connection: TLSConnection?
    private(set) var state: State = .idle
    private var pendingWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var flushPending = false
    private var handshakeTimer: Scheduled<Void>?
    private var firstByteTimer: Scheduled<Void>?
    private var handshakeStarted = NIODeadline.now()

    /// - Parameter expectedPeer: client role: the identity the server must present.
    /// - Parameter sessionKey: client role: resume sessions cached under this key (see
    ///   `TLSConnection`); nil for a full handshake every time.
    package init(context: TLSContext, expectedPeer: SPIFFEID? = nil, sessionKey: String? = nil,
                configuration: TLSHandlerConfiguration = TLSHandlerConfiguration()) {
        self.peer = .mesh(context, expectedPeer: expectedPeer, sessionKey: sessionKey)
        self.configuration = configuration
    }

    /// Client of an HTTPS server (the Consul agent's API): verified against `context`'s trust
    /// store under `serverName`.
    package init(httpsClient context: HTTPSClientContext, serverName: String,
                configuration: TLSHandlerConfiguration = TLSHandlerConfiguration()) {
        self.peer = .httpsServer(context, serverName: serverName)
        self.configuration = configuration
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        do {
            switch peer {
            case .mesh(let tlsContext, let expectedPeer, let sessionKey):
                connection = try TLSConnection(context: tlsContext, expectedPeer: expectedPeer, sessionKey: sessionKey,
                                               allocator: context.channel.allocator)
            case .httpsServer(let httpsContext, let serverName):
                connection = try TLSConnection(httpsContext: httpsContext, serverName: serverName,
                                               allocator: context.channel.allocator)
            }
        } catch {
            state = .closed
            context.fireErrorCaught(TLSError.handshakeFailed("\(error)"))
            context.close(promise: nil)
            return
        }
        if context.channel.isActive { startHandshake(context: context) }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        firstByteTimer?.cancel()
        failPendingWrites(ChannelError.ioOnClosedChannel)
    }

    package func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if case .idle = state { startHandshake(context: context) }
    }

    package func channelInactive(context: ChannelHandlerContext) {
        switch state {
        case .handshaking:
            context.fireErrorCaught(TLSError.handshakeFailed("connection closed during handshake"))
        case .open(inputOpen: true, _):
            context.fireErrorCaught(TLSError.uncleanShutdown)
        default:
            break
        }
        enterClosed()
        context.fireChannelInactive()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var ciphertext = unwrapInboundIn(data)
        guard let connection else { return }
        switch state {
        case .handshaking:
            firstByteTimer?.cancel()
            firstByteTimer = nil
            connection.bio.receive(&ciphertext)
            runHandshake(context: context)
        case .open(inputOpen: true, _):
            connection.bio.receive(&ciphertext)
            deliverPlaintext(context: context)
        case .idle, .open(inputOpen: false, _), .closed:
            break // Nothing may follow close_notify; drop anything else.
        }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let channelEvent = event as? ChannelEvent, channelEvent == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch state {
        case .handshaking:
            fail(context: context, TLSError.handshakeFailed("peer closed the connection during handshake"))
        case .open(inputOpen: true, _):
            fail(context: context, TLSError.uncleanShutdown)
        default:
            break // Already reported when close_notify arrived.
        }
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch state {
        case .idle, .handshaking, .open(_, outputOpen: true):
            pendingWrites.append((unwrapOutboundIn(data), promise))
        case .open(_, outputOpen: false), .closed:
            promise?.fail(ChannelError.outputClosed)
        }
    }

    package func flush(context: ChannelHandlerContext) {
        switch state {
        case .idle, .handshaking:
            flushPending = true
        case .open(_, outputOpen: true):
            encryptPendingWrites(context: context)
        case .open(_, outputOpen: false), .closed:
            break
        }
    }

    package func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch (mode, state) {
        case (.output, .open(let inputOpen, outputOpen: true)):
            // Shut TCP down only after close_notify (and everything before it) reached the
            // socket: NIO discards pending writes when a half-close escalates to a full close.
            // Writes not yet flushed go ahead of close_notify too, also when the peer's input
            // has already ended: a mux's last frames may still wait for their flush.
            state = .open(inputOpen: inputOpen, outputOpen: false)
            sendCloseNotify(context: context).assumeIsolated().whenComplete { [self] _ in
                if !inputOpen { enterClosed() }
                context.close(mode: inputOpen ? .output : .all, promise: promise)
            }
        case (.all, .open(_, outputOpen: true)):
            _ = sendCloseNotify(context: context)
            enterClosed()
            context.close(mode: .all, promise: promise)
        case (.all, _):
            enterClosed()
            context.close(mode: .all, promise: promise)
        default:
            context.close(mode: mode, promise: promise)
        }
    }

    package func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if event is TLSForgetSession {
            connection?.discardSession()
            promise?.succeed()
            return
        }
        guard event is TLSAbortRequest else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        enterClosed()
        promise?.succeed()
        context.close(promise: nil)
    }

    // MARK: - Handshake

    private func startHandshake(context: ChannelHandlerContext) {
        state = .handshaking
        handshakeStarted = .now()
        if let timeout = configuration.handshakeTimeout {
            handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
                guard let self, case .handshaking = self.state else { return }
                self.fail(context: context, TLSError.handshakeTimeout)
            }
        }
        if let timeout = configuration.firstByteTimeout, let handshakeTimeout = configuration.handshakeTimeout,
           timeout < handshakeTimeout {
            firstByteTimer = context.eventLoop.scheduleTask(in: timeout) { [weak self] in
                guard let self, case .handshaking = self.state else { return }
                self.fail(context: context, TLSError.firstByteTimeout)
            }
        }
        runHandshake(context: context)
    }

    private func runHandshake(context: ChannelHandlerContext) {
        guard let connection else { return }
        switch connection.handshake() {
        case .wantRead:
            writeCiphertext(context: context)
        case .done:
            writeCiphertext(context: context)
            handshakeTimer?.cancel()
            handshakeTimer = nil
            firstByteTimer?.cancel()
            firstByteTimer = nil
            switch connection.verifiedPeer() {
            case .failure(let reason):
                fail(context: context, TLSError.peerRejected(reason))
            case .success(let verified):
                state = .open(inputOpen: true, outputOpen: true)
                switch verified {
                case .mesh(var peer):
                    peer.handshakeDuration = .now() - handshakeStarted
                    context.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(peer))
                case .namedServer:
                    context.fireUserInboundEventTriggered(TLSEvent.serverVerified)
                }
                if flushPending {
                    flushPending = false
                    encryptPendingWrites(context: context)
                }
                // Application data may have arrived with the last handshake flight.
                if connection.hasBufferedInput {
                    deliverPlaintext(context: context)
                }
            }
        case .closeNotify:
            fail(context: context, TLSError.handshakeFailed("peer sent close_notify during handshake"))
        case .failed(let reason):
            writeCiphertext(context: context) // The alert tells the peer why.
            if let rejection = connection.verificationFailure {
                fail(context: context, TLSError.peerRejected(rejection))
            } else {
                fail(context: context, TLSError.handshakeFailed(reason))
            }
        }
    }

    // MARK: - Data

    private func deliverPlaintext(context: ChannelHandlerContext) {
        guard let connection else { return }
        reading: while case .open(inputOpen: true, _) = state {
            var plaintext = context.channel.allocator.buffer(capacity: configuration.plaintextChunkSize)
            var outcome = TLSConnection.Outcome.done
            while plaintext.writableBytes > 0 {
                let (count, result) = connection.read(into: &plaintext)
                if count == 0 {
                    outcome = result
                    break
                }
            }
            if plaintext.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plaintext)) }
            if plaintext.writableBytes == 0 { continue reading } // Filled the chunk: more may wait.
            switch outcome {
            case .done, .wantRead:
                break reading
            case .closeNotify:
                receivedCloseNotify(context: context)
                break reading
            case .failed(let reason):
                fail(context: context, TLSError.protocolError(reason))
                return
            }
        }
        // Reading can produce output (TLS 1.3 key updates, alerts).
        writeCiphertext(context: context)
    }

    private func receivedCloseNotify(context: ChannelHandlerContext) {
        guard case .open(_, let outputOpen) = state else { return }
        if outputOpen {
            state = .open(inputOpen: false, outputOpen: true)
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else {
            enterClosed()
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            context.close(promise: nil)
        }
    }

    /// Encrypts every pending write in whole records (RecordPacker), then hands the ciphertext
    /// to the channel in one write.
    private func encryptPendingWrites(context: ChannelHandlerContext) {
        guard let connection, !pendingWrites.isEmpty else { return }
        let writes = pendingWrites
        pendingWrites.removeAll(keepingCapacity: true)
        var promises: [EventLoopPromise<Void>] = []
        var failure: String?

        func encrypt(_ buffer: ByteBuffer) {
            guard failure == nil else { return }
            if case .failed(let reason) = connection.write(buffer) { failure = reason }
        }
        var plaintextBytes = 0
        for (buffer, promise) in writes {
            plaintextBytes += buffer.readableBytes
            if let promise { promises.append(promise) }
        }
        if writes.count == 1 {
            // OpenSSL cuts one buffer into the same records the packer would (a keep-alive
            // request's frames arrive so), and no second piece can regrow the ciphertext buffer.
            if plaintextBytes > 0 { encrypt(writes[0].0) }
        } else if plaintextBytes > 0 {
            connection.reserveCiphertext(plaintextBytes: plaintextBytes) // one buffer for every piece
            var packer = RecordPacker(allocator: context.channel.allocator)
            for (buffer, _) in writes { packer.add(buffer, emit: encrypt) }
            packer.finish(emit: encrypt)
        }

        if let failure {
            promises.forEach { $0.fail(TLSError.protocolError(failure)) }
            fail(context: context, TLSError.protocolError(failure))
            return
        }
        guard let ciphertext = connection.bio.takeOutbound() else {
            promises.forEach { $0.succeed() }
            return
        }
        var combined: EventLoopPromise<Void>?
        if !promises.isEmpty {
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.whenComplete { result in promises.forEach { $0.completeWith(result) } }
            combined = promise
        }
        context.writeAndFlush(wrapOutboundOut(ciphertext), promise: combined)
    }

    /// Encrypts what is pending, queues close_notify; the future completes once all of it has
    /// been written to the socket.
    private func sendCloseNotify(context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        encryptPendingWrites(context: context)
        connection?.shutdown()
        guard let ciphertext = connection?.bio.takeOutbound() else { return context.eventLoop.makeSucceededVoidFuture() }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(ciphertext), promise: promise)
        return promise.futureResult
    }

    private func writeCiphertext(context: ChannelHandlerContext) {
        guard let ciphertext = connection?.bio.takeOutbound() else { return }
        context.writeAndFlush(wrapOutboundOut(ciphertext), promise: nil)
    }

    private func fail(context: ChannelHandlerContext, _ error: TLSError) {
        if case .closed = state { return }
        connection?.discardSession()
        enterClosed()
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    private func enterClosed() {
        state = .closed
        handshakeTimer?.cancel()
        handshakeTimer = nil
        firstByteTimer?.cancel()
        firstByteTimer = nil
        failPendingWrites(ChannelError.ioOnClosedChannel)
    }

    private func failPendingWrites(_ error: Error) {
        let writes = pendingWrites
        pendingWrites.removeAll()
        writes.forEach { $0.1?.fail(error) }
    }
}
