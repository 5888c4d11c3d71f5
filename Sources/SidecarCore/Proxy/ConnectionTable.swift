import FoundationEssentials
import NIOConcurrencyHelpers
import NIOCore

/// Every accepted connection and mux stream, per listener, from accept to close: for
/// connection limits, for re-authorization and lifetime cuts of inbound tunnels, for draining
/// on shutdown, and for the admin API. Each entry knows its kind, and a joined inbound tunnel
/// how it was authorized and joined.
///
/// Two budgets per listener, so unauthenticated connections can never lock out verified ones:
/// - connections still in their handshake have a budget of their own
///   (`max_pending_handshakes`). When it is full, a new connection takes the slot of one that
///   has sent nothing for `silentGrace`, or of one that has been handshaking for
///   `staleHandshake` (a legitimate peer finishes in milliseconds). When every pending
///   handshake is young and progressing (a reconnect storm), accepting pauses instead: peers
///   wait in the kernel's backlog rather than having work already spent on them thrown away.
/// - established ones (verified plain connections, mux connections and their streams) pause
///   accepting at `max_connections`, so clients wait in the backlog instead of being accepted
///   and dropped. Mux streams are admitted against the tunnels among them (plain connections
///   and streams): there is no backlog to leave a stream waiting in.
///
/// Pausing is level-triggered: whatever changed (a close, a limit lowered or raised at
/// runtime), the acceptor's own event loop compares the counts with the limits in force and
/// sets autoRead to match, so no ordering of events can leave a listener paused below its
/// limits. NIO may accept up to maxMessagesPerRead (4) in the burst that reaches a limit.
///
/// A listener with one acceptor per event loop (the public one) is also balanced: only the
/// acceptors on the loops with the fewest open entries accept, so a peer's mux connections,
/// whose streams all run on their connection's loop, are spread over the cores.
final class ConnectionTable: Sendable {
    /// A pending handshake older than this may lose its slot to a new connection (a
    /// legitimate peer finishes in milliseconds).
    let staleHandshake: TimeAmount

    /// A pending handshake that has sent nothing for this long may lose its slot first.
    let silentGrace: TimeAmount

    init(staleHandshake: TimeAmount = .seconds(1), silentGrace: TimeAmount = .milliseconds(250)) {
        self.staleHandshake = staleHandshake
        self.silentGrace = silentGrace
    }

    private struct Listener {
        /// Handshaking connections, oldest first.
        var handshaking: [ObjectIdentifier] = []
        var established = 0
        /// Of the established, the tunnels.
        var tunnels = 0
        var maxConnections = Int.max
        var handshakeBudget = Int.max
        /// The server channels accepting for it: one, or one per event loop on a shared socket.
        var acceptors: [Acceptor] = []
        /// Open entries per event loop, to steer accepts toward the least loaded one.
        var perLoop: [ObjectIdentifier: Int] = [:]
        var recheckArmed = false
    }

    /// One server channel; `paused` is what it was last told (autoRead off).
    private struct Acceptor {
        let channel: Channel
        var loop: ObjectIdentifier { ObjectIdentifier(channel.eventLoop) }
        var paused = false
        var reconcileQueued = false
    }

    private struct State {
        /// Keyed by the channel, which the entry keeps alive until its close removes it.
        var open: [ObjectIdentifier: Tracked] = [:]
        var listeners: [String: Listener] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Sets a listener's limits (at bind and whenever the configuration changes).
    func configure(_ listener: String, maxConnections: Int, handshakeBudget: Int = .max) {
        let acceptors = state.withLockedValue { state -> [Channel] in
            state.listeners[listener, default: Listener()].maxConnections = maxConnections
            state.listeners[listener]!.handshakeBudget = handshakeBudget
            return reconcileNeeded(&state, listener)
        }
        queueReconcile(acceptors, listener)
    }

    /// Registers the server channels of a listener that accepts on every event loop: the
    /// first bound accepting, the others bound paused (autoRead off), which the table then
    /// resumes one at a time as the load moves.
    func adopt(_ listener: String, acceptors: [Channel]) {
        let queued = state.withLockedValue { state -> [Channel] in
            for (index, acceptor) in acceptors.enumerated() { adopt(&state, listener, acceptor: acceptor, paused: index > 0) }
            return reconcileNeeded(&state, listener)
        }
        queueReconcile(queued, listener)
        // NIO closes an acceptor on some accept errors (EPERM, EPROTO); the socket still
        // listens through the others, and one of them must take over at once.
        for acceptor in acceptors {
            acceptor.closeFuture.whenComplete { [weak self] _ in
                guard let self else { return }
                let queued = self.state.withLockedValue { state -> [Channel] in
                    state.listeners[listener]?.acceptors.removeAll { $0.channel === acceptor }
                    return self.reconcileNeeded(&state, listener)
                }
                self.queueReconcile(queued, listener)
            }
        }
    }

    /// Registers a connection accepted on a listener whose connections start with a TLS
    /// handshake. Returns the connection closed to make room when the handshake budget was
    /// full (the caller closes it and reports it).
    func trackHandshaking(_ channel: Channel, listener: String, connectionID: String) -> Channel? {
        let id = ObjectIdentifier(channel)
        let (evicted, acceptors) = state.withLockedValue { state -> (Channel?, [Channel]) in
            open(&state, Tracked(listener: listener, channel: channel, kind: .handshaking, id: connectionID))
            adopt(&state, listener, acceptor: channel.parent)
            state.listeners[listener]!.handshaking.append(id)
            var evicted: Channel?
            let entry = state.listeners[listener]!
            // Never the newcomer itself: with nothing else evictable the budget overshoots by
            // the accept burst and the listener pauses, so a legitimate peer is served late
            // rather than reset.
            if entry.handshaking.count > entry.handshakeBudget, let victim = evictable(state, entry, now: .now(), sparing: id) {
                state.listeners[listener]!.handshaking.removeAll { $0 == victim }
                evicted = state.open[victim]?.channel
            }
            return (evicted, reconcileNeeded(&state, listener))
        }
        queueReconcile(acceptors, listener)
        watchClose(channel, listener: listener)
        return evicted
    }

    /// A handshaking connection's peer sent its first bytes (which can leave nothing to
    /// evict, and so pause the listener).
    func spoke(_ channel: Channel) {
        updateHandshaking(channel) { state, id, _ in state.open[id]!.spoke = true }
    }

    /// Applies `change` to a connection still in its handshake (nothing when it is not), then
    /// has its listener reconciled if the change calls for it.
    private func updateHandshaking(_ channel: Channel, _ change: (inout State, ObjectIdentifier, Tracked) -> Void) {
        var listener = ""
        let acceptors = state.withLockedValue { state -> [Channel] in
            let id = ObjectIdentifier(channel)
            guard let tracked = state.open[id], tracked.kind == .handshaking else { return [] }
            listener = tracked.listener
            change(&state, id, tracked)
            return reconcileNeeded(&state, tracked.listener)
        }
        queueReconcile(acceptors, listener)
    }

    /// Registers a connection that is a tunnel from the start (an upstream listener's local
    /// caller).
    func trackTunnel(_ channel: Channel, listener: String, connectionID: String) {
        let acceptors = state.withLockedValue { state -> [Channel] in
            open(&state, Tracked(listener: listener, channel: channel, kind: .tunnel, id: connectionID))
            adopt(&state, listener, acceptor: channel.parent)
            establish(&state, listener: listener, tunnel: true)
            return reconcileNeeded(&state, listener)
        }
        queueReconcile(acceptors, listener)
        watchClose(channel, listener: listener)
    }

    /// Registers a stream opened on an accepted mux connection, unless the listener already
    /// has max_connections tunnels (false: there is no backlog to leave a stream waiting in;
    /// the caller refuses it).
    func admit(_ stream: Channel, listener: String, connectionID: String) -> Bool {
        let admitted = state.withLockedValue { state -> (admitted: Bool, acceptors: [Channel]) in
            let entry = state.listeners[listener, default: Listener()]
            guard entry.tunnels < entry.maxConnections else { return (false, []) }
            open(&state, Tracked(listener: listener, channel: stream, kind: .stream, id: connectionID))
            establish(&state, listener: listener, tunnel: true)
            return (true, reconcileNeeded(&state, listener))
        }
        guard admitted.admitted else { return false }
        queueReconcile(admitted.acceptors, listener)
        watchClose(stream, listener: listener)
        return true
    }

    /// A handshaking connection was verified: a plain connection becomes a tunnel, a mux
    /// connection transport (it counts toward pausing accepts, not toward tunnels).
    func classify(_ channel: Channel, as kind: Tracked.Kind) {
        precondition(kind == .tunnel || kind == .muxCarrier, "only handshaking connections are classified")
        updateHandshaking(channel) { state, id, tracked in
            state.open[id]!.kind = kind
            state.listeners[tracked.listener]!.handshaking.removeAll { $0 == id }
            establish(&state, listener: tracked.listener, tunnel: kind == .tunnel)
        }
    }

    /// An entry opens, counted on its loop (`watchClose` undoes both).
    private func open(_ state: inout State, _ tracked: Tracked) {
        state.open[ObjectIdentifier(tracked.channel)] = tracked
        state.listeners[tracked.listener, default: Listener()].perLoop[ObjectIdentifier(tracked.channel.eventLoop), default: 0] += 1
    }

    private func adopt(_ state: inout State, _ listener: String, acceptor: Channel?, paused: Bool = false) {
        if state.listeners[listener] == nil { state.listeners[listener] = Listener() }
        guard let acceptor, !state.listeners[listener]!.acceptors.contains(where: { $0.channel === acceptor }) else { return }
        // A rebound listener: its old server channels are closed, its new ones start out
        // accepting.
        state.listeners[listener]!.acceptors.removeAll { !$0.channel.isActive }
        state.listeners[listener]!.acceptors.append(Acceptor(channel: acceptor, paused: paused))
    }

    private func establish(_ state: inout State, listener: String, tunnel: Bool) {
        state.listeners[listener, default: Listener()].established += 1
        if tunnel { state.listeners[listener]!.tunnels += 1 }
    }

    /// The pending handshake a new connection may take the slot of: the oldest that has not
    /// spoken within `silentGrace` (a client sends its hello as soon as it connects, but a
    /// burst of accepts is registered before any of them is read), else the oldest older than
    /// `staleHandshake`.
    private func evictable(_ state: State, _ listener: Listener, now: NIODeadline, sparing: ObjectIdentifier? = nil) -> ObjectIdentifier? {
        let pending = listener.handshaking.filter { $0 != sparing }.compactMap { id in state.open[id].map { (id, $0) } }
        if let silent = pending.first(where: { !$0.1.spoke && now - $0.1.accepted >= silentGrace }) { return silent.0 }
        return pending.first { now - $0.1.accepted >= staleHandshake }?.0
    }

    /// When a pending handshake will next become evictable.
    private func nextEvictable(_ state: State, _ listener: Listener) -> NIODeadline? {
        listener.handshaking.compactMap { state.open[$0] }
            .map { $0.accepted + ($0.spoke ? staleHandshake : silentGrace) }
            .min()
    }

    /// Whether the listener should be paused now, and when to look again if only the age of
    /// its pending handshakes can change that.
    private func wantsPause(_ state: State, _ listener: Listener, now: NIODeadline) -> (pause: Bool, recheck: NIODeadline?) {
        if listener.established >= listener.maxConnections { return (true, nil) }
        guard listener.handshaking.count >= listener.handshakeBudget else { return (false, nil) }
        if evictable(state, listener, now: now) != nil { return (false, nil) }
        return (true, nextEvictable(state, listener) ?? now + staleHandshake)
    }

    /// Whether `acceptor` should stop accepting: the listener is paused, or it is not the one
    /// of several chosen to accept. Accepts then land on the least loaded loop (one socket: a
    /// connection left by a paused acceptor is taken by the chosen one), so the mux
    /// connections of a single peer, whose streams all run on their connection's loop, end
    /// up on different loops rather than where round-robin happened to put them.
    private func wantsPause(_ state: State, _ listener: Listener, _ acceptor: Acceptor, now: NIODeadline) -> (pause: Bool, recheck: NIODeadline?) {
        let wanted = wantsPause(state, listener, now: now)
        guard !wanted.pause, listener.acceptors.count > 1 else { return wanted }
        return (chosen(listener) !== acceptor.channel, wanted.recheck)
    }

    /// The acceptor on the least loaded loop; the one accepting now keeps the job on a tie, so
    /// a steady load does not move it back and forth.
    private func chosen(_ listener: Listener) -> Channel? {
        let live = listener.acceptors.filter { $0.channel.isActive }
        guard let least = live.map({ listener.perLoop[$0.loop, default: 0] }).min() else { return nil }
        let candidates = live.filter { listener.perLoop[$0.loop, default: 0] == least }
        return (candidates.first { !$0.paused } ?? candidates.first)?.channel
    }

    /// The acceptors to reconcile because their pause state should change (once queued,
    /// further changes wait for that reconcile, which reads the state afresh).
    private func reconcileNeeded(_ state: inout State, _ listener: String) -> [Channel] {
        guard let entry = state.listeners[listener] else { return [] }
        let now = NIODeadline.now()
        var queued: [Channel] = []
        for (index, acceptor) in entry.acceptors.enumerated() where !acceptor.reconcileQueued {
            guard wantsPause(state, entry, acceptor, now: now).pause != acceptor.paused else { continue }
            state.listeners[listener]!.acceptors[index].reconcileQueued = true
            queued.append(acceptor.channel)
        }
        return queued
    }

    private func queueReconcile(_ acceptors: [Channel], _ listener: String) {
        for acceptor in acceptors { acceptor.eventLoop.execute { self.reconcile(listener, acceptor: acceptor) } }
    }

    /// On the acceptor's event loop, so the autoRead changes it makes apply in order.
    ///
    /// Of several acceptors on one socket, never two accept at once: NIO takes a readable
    /// listener to hold a connection, and the one that loses the race to accept it would find
    /// none (its debug builds assert). So a pause is applied under the lock, before anyone can
    /// see it recorded, and a resume waits until every other acceptor is recorded paused (the
    /// last to pause queues the waiting one again).
    private func reconcile(_ listener: String, acceptor channel: Channel) {
        let now = NIODeadline.now()
        let decided = state.withLockedValue { state -> (resume: Bool, recheck: NIODeadline?, next: [Channel])? in
            guard var entry = state.listeners[listener],
                  let index = entry.acceptors.firstIndex(where: { $0.channel === channel }) else { return nil }
            var pause = wantsPause(state, entry, entry.acceptors[index], now: now)
            if !pause.pause, entry.acceptors.contains(where: { $0.channel !== channel && !$0.paused && $0.channel.isActive }) {
                pause.pause = true
            }
            let wasPaused = entry.acceptors[index].paused
            entry.acceptors[index].reconcileQueued = false
            entry.acceptors[index].paused = pause.pause
            if pause.pause, !wasPaused {
                // Pausing reads nothing, so it cannot call back into the table.
                try? channel.setAutoReadNow(false)
            }
            var recheck: NIODeadline?
            if let at = pause.recheck, !entry.recheckArmed {
                entry.recheckArmed = true
                recheck = at
            }
            state.listeners[listener] = entry
            let next = pause.pause && !wasPaused ? reconcileNeeded(&state, listener) : []
            return (!pause.pause && wasPaused, recheck, next)
        }
        guard let decided else { return }
        // Outside the lock: resuming reads at once, and an accepted connection is tracked here.
        if decided.resume { try? channel.setAutoReadNow(true) }
        queueReconcile(decided.next, listener)
        if let recheck = decided.recheck {
            channel.eventLoop.scheduleTask(deadline: recheck) {
                let acceptors = self.state.withLockedValue { state -> [Channel] in
                    state.listeners[listener]?.recheckArmed = false
                    return state.listeners[listener]?.acceptors.map(\.channel) ?? []
                }
                // Each looks again on its own loop (and re-arms if it must wait longer).
                self.queueReconcile(acceptors, listener)
            }
        }
    }

    private func watchClose(_ channel: Channel, listener: String) {
        let id = ObjectIdentifier(channel)
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            let acceptors = self.state.withLockedValue { state -> [Channel] in
                guard let closed = state.open.removeValue(forKey: id) else { return [] }
                state.listeners[listener]!.perLoop[ObjectIdentifier(closed.channel.eventLoop), default: 1] -= 1
                switch closed.kind {
                case .handshaking:
                    state.listeners[listener]!.handshaking.removeAll { $0 == id }
                case .tunnel, .stream, .muxCarrier:
                    state.listeners[listener]!.established -= 1
                    if closed.kind != .muxCarrier { state.listeners[listener]!.tunnels -= 1 }
                }
                return self.reconcileNeeded(&state, listener)
            }
            self.queueReconcile(acceptors, listener)
        }
    }

    /// Registers an inbound tunnel about to be joined for re-authorization and lifetime cuts.
    /// False when it already closed.
    func registerInbound(_ mesh: Channel, as record: TunnelRecord, authorization: InboundAuthorization) -> Bool {
        state.withLockedValue { state in
            guard state.open[ObjectIdentifier(mesh)] != nil else { return false }
            state.open[ObjectIdentifier(mesh)]!.tunnel = record
            state.open[ObjectIdentifier(mesh)]!.inbound = authorization
            return true
        }
    }

    /// Registers an accepted mux connection for re-authorization. False when it already closed.
    func registerCarrier(_ channel: Channel, authorization: CarrierAuthorization) -> Bool {
        state.withLockedValue { state in
            guard state.open[ObjectIdentifier(channel)]?.kind == .muxCarrier else { return false }
            state.open[ObjectIdentifier(channel)]!.carrier = authorization
            return true
        }
    }

    /// Registered mux connections not yet retired by a revocation.
    var carriers: [Tracked] {
        state.withLockedValue { $0.open.values.filter { $0.carrier != nil && !$0.revoked } }
    }

    /// Marks a mux connection retired, once (two updates in a row may both deny it): the
    /// first caller gets its authorization, to retire it; later ones nil.
    @discardableResult
    func claimCarrierForRetirement(_ channel: Channel) -> CarrierAuthorization? {
        state.withLockedValue { state in
            let id = ObjectIdentifier(channel)
            guard let entry = state.open[id], let carrier = entry.carrier, !entry.revoked else { return nil }
            state.open[id]!.revoked = true
            return carrier
        }
    }

    /// Inbound tunnels registered and not revoked.
    var inboundTunnels: [Tracked] {
        state.withLockedValue { $0.open.values.filter { $0.inbound != nil && !$0.revoked } }
    }

    /// Marks an inbound tunnel revoked, once: the first caller gets the entry (to audit and
    /// abort it), later ones nil (an intention change and the lifetime limit may race).
    func claimForRevocation(_ mesh: Channel) -> Tracked? {
        state.withLockedValue { state in
            let id = ObjectIdentifier(mesh)
            guard let entry = state.open[id], entry.inbound != nil, !entry.revoked else { return nil }
            state.open[id]!.revoked = true
            return entry
        }
    }

    /// Describes a joined tunnel for `/connections` (nothing if it already closed).
    func describe(_ channel: Channel, as tunnel: TunnelRecord, stats: ConnectionStats) {
        let bound = NIOLoopBound(stats, eventLoop: channel.eventLoop)
        state.withLockedValue { state in
            guard state.open[ObjectIdentifier(channel)] != nil else { return }
            state.open[ObjectIdentifier(channel)]!.tunnel = tunnel
            state.open[ObjectIdentifier(channel)]!.stats = bound
        }
    }

    /// Everything open on a listener, handshaking connections included.
    func count(_ listener: String) -> Int { state.withLockedValue { $0.open.values.filter { $0.listener == listener }.count } }
    func handshaking(_ listener: String) -> Int { state.withLockedValue { $0.listeners[listener]?.handshaking.count ?? 0 } }
    /// Whether no acceptor of the listener is accepting (for tests; with several acceptors,
    /// also for the moment of a hand-off between two of them).
    func isPaused(_ listener: String) -> Bool {
        state.withLockedValue { state in
            guard let acceptors = state.listeners[listener]?.acceptors.filter({ $0.channel.isActive }), !acceptors.isEmpty else { return false }
            return acceptors.allSatisfy(\.paused)
        }
    }
    var total: Int { state.withLockedValue { $0.open.count } }
    var channels: [Tracked] { state.withLockedValue { Array($0.open.values) } }
}

