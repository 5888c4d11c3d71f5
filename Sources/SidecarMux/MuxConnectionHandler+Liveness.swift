import NIOCore

/// A mux connection's timers: the idle close (no streams for `idleTimeout`) and the keepalive
/// (PING a silent peer, close one that stays silent). Everything runs on the event loop.
extension MuxConnectionHandler {
    /// When anything last arrived from the peer.
    package var lastInputAt: NIODeadline { lastInput }

    /// Client: a stream open went unanswered, so the peer may be gone without a word (link
    /// down, no RST). A PING goes out now; unless anything arrives from the peer within
    /// `within`, the connection is closed, which fails every stream on it at once instead of
    /// leaving their local connections to hang until the keepalive gives up.
    package func probePeer(within: TimeAmount) {
        guard let context, let session, !state.isClosed else { return }
        let sent = context.eventLoop.now
        session.ping()
        pump()
        context.eventLoop.assumeIsolated().scheduleTask(in: within) { [weak self] in
            guard let self, !self.state.isClosed, let context = self.context, self.lastInput < sent else { return }
            self.onUnresponsivePeer?(Double((context.eventLoop.now - self.lastInput).nanoseconds) / 1e9)
            context.close(promise: nil)
        }
    }

    /// Streams come and go; a connection left without any for `idleTimeout` is retired.
    func armIdleClose() {
        guard let idleTimeout = settings.idleTimeout, let eventLoop, streams.isEmpty, idleClose == nil, !state.isClosed else { return }
        idleClose = eventLoop.assumeIsolated().scheduleTask(in: idleTimeout) { [weak self] in
            guard let self else { return }
            self.idleClose = nil
            if self.streams.isEmpty { self.beginDraining() }
        }
    }

    func disarmIdleClose() {
        idleClose?.cancel()
        idleClose = nil
    }

    func armKeepalive() {
        guard let interval = settings.keepaliveInterval, let eventLoop, keepalive == nil, !state.isClosed else { return }
        keepalive = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            self?.checkPeerAlive(interval: interval)
        }
    }

    /// Any input answers a PING (its ACK, or anything else the peer sent meanwhile).
    private func checkPeerAlive(interval: TimeAmount) {
        guard let context, let session, !state.isClosed else { return }
        let now = context.eventLoop.now
        if let sent = pingSent {
            guard lastInput < sent else {
                pingSent = nil
                return
            }
            if now - sent >= interval {
                let silence = Double((now - lastInput).nanoseconds) / 1e9
                onUnresponsivePeer?(silence)
                context.close(promise: nil)
            }
            return
        }
        guard now - lastInput >= interval else { return }
        session.ping()
        pingSent = now
        pump()
    }
}
