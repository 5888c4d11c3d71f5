extension MuxConnectionHandler {
    /// Our side of a mux connection's life: whether we told the peer to go away, and whether
    /// the channel is over. Transitions (all in MuxConnectionHandler.swift):
    ///
    ///     active --beginDraining, client--> draining
    ///     active --beginDraining, server--> announcedShutdown --1 s later--> draining
    ///     any other --connectionEnded (inactive, or handler removed)--> closed
    ///
    /// The peer's GOAWAY (`goawayReceived`) is kept beside it, not in it: it arrives whatever
    /// our own state is, also while we drain.
    enum State {
        /// Serving: new streams are welcome.
        case active
        /// Server: GOAWAY with the maximum stream id is out (stop opening streams); streams
        /// already on their way may still arrive. The final GOAWAY follows a second later.
        case announcedShutdown
        /// Our final GOAWAY (naming the last stream processed) is out: the connection closes
        /// once its last stream is done.
        case draining
        /// The channel went inactive or the handler was removed: every stream was cut.
        /// `wasDraining`: we had announced or sent GOAWAY first (a pump that outlives the close
        /// still asks, to tell nghttp2 ending the session from our own drain).
        case closed(wasDraining: Bool)

        /// Neither going away nor closed.
        var isActive: Bool {
            if case .active = self { return true }
            return false
        }

        /// The connection ended: nothing more is read, sent or scheduled.
        var isClosed: Bool {
            if case .closed = self { return true }
            return false
        }

        /// We announced or sent GOAWAY (still known once closed).
        var hasBegunDraining: Bool {
            switch self {
            case .active: return false
            case .announcedShutdown, .draining: return true
            case .closed(let wasDraining): return wasDraining
            }
        }
    }
}
