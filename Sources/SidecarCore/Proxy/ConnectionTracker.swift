import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Every accepted connection and mux stream, per listener, from accept to close: for
/// connection limits, for draining on shutdown, and for the admin API's counts.
///
/// Two budgets per listener, so unauthenticated connections can never lock out verified ones:
/// - connections still in their handshake have a small budget of their own
///   (`max_pending_handshakes`). When it is full, the oldest of them is closed to make room:
///   a legitimate peer finishes its handshake in milliseconds, so the oldest is almost always
///   one that holds a slot without speaking (a half-open flood), and a new peer is never
///   turned away for it.
/// - established ones (verified plain connections, mux connections and their streams) pause
///   accepting at `max_connections`, so clients wait in the kernel's backlog instead of being
///   accepted and dropped. Mux streams are admitted against the tunnels among them (plain
///   connections and streams): there is no backlog to leave a stream waiting in.
final class ConnectionTracker: Sendable {
    struct Tracked {
        enum Kind {
            /// Accepted on a public listener, handshake not yet complete.
            case handshaking
            /// A verified plain connection, or a local caller's connection: one tunnel.
            case tunnel
            /// A connection that negotiated the mux: transport, its streams are the tunnels.
            case muxCarrier
            /// A stream on a mux connection (whose channel is its `parent`).
            case stream
        }

        var listener: String
        var channel: Channel
        var kind: Kind
        var isStream: Bool { kind == .stream }
        var isMuxCarrier: Bool { kind == .muxCarrier }
    }

    private struct Listener {
        /// Handshaking connections, oldest first.
        var handshaking: [ObjectIdentifier] = []
        var established = 0
        /// Of the established, the tunnels.
        var tunnels = 0
        /// The server channel, paused while `established` is at the limit.
        var acceptor: Channel?
    }

    private struct State {
        /// Keyed by the channel, which the entry keeps alive until its close removes it.
        var open: [ObjectIdentifier: Tracked] = [:]
        var listeners: [String: Listener] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Registers a connection accepted on a listener whose connections start with a TLS
    /// handshake. Returns the connection closed to make room when `handshakeBudget` was full
    /// (the caller closes it and reports it).
    func trackHandshaking(_ channel: Channel, listener: String, handshakeBudget: Int, limit: Int) -> Channel? {
        let id = ObjectIdentifier(channel)
        let evicted = state.withLockedValue { state -> Channel? in
            state.open[id] = Tracked(listener: listener, channel: channel, kind: .handshaking)
            state.listeners[listener, default: Listener()].acceptor = channel.parent
            state.listeners[listener]!.handshaking.append(id)
            guard state.listeners[listener]!.handshaking.count > handshakeBudget else { return nil }
            let oldest = state.listeners[listener]!.handshaking.removeFirst()
            return state.open[oldest]?.channel
        }
        watchClose(channel, listener: listener, limit: limit)
        return evicted
    }

    /// Registers a connection that is a tunnel from the start (an upstream listener's local
    /// caller). At `limit` the listener stops accepting until something closes. (NIO may
    /// accept up to maxMessagesPerRead, 4, in the burst that reaches the limit.)
    func trackTunnel(_ channel: Channel, listener: String, limit: Int) {
        let id = ObjectIdentifier(channel)
        let acceptor = state.withLockedValue { state -> Channel? in
            state.open[id] = Tracked(listener: listener, channel: channel, kind: .tunnel)
            state.listeners[listener, default: Listener()].acceptor = channel.parent
            return establish(&state, listener: listener, tunnel: true, limit: limit)
        }
        pause(acceptor)
        watchClose(channel, listener: listener, limit: limit)
    }

    /// Registers a stream opened on an accepted mux connection, unless the listener already
    /// has `limit` tunnels (false: there is no backlog to leave a stream waiting in; the caller
    /// refuses it).
    func admit(_ stream: Channel, listener: String, limit: Int) -> Bool {
        let id = ObjectIdentifier(stream)
        let admitted = state.withLockedValue { state -> (admitted: Bool, pause: Channel?) in
            guard state.listeners[listener, default: Listener()].tunnels < limit else { return (false, nil) }
            state.open[id] = Tracked(listener: listener, channel: stream, kind: .stream)
            return (true, establish(&state, listener: listener, tunnel: true, limit: limit))
        }
        guard admitted.admitted else { return false }
        pause(admitted.pause)
        watchClose(stream, listener: listener, limit: limit)
        return true
    }

    /// A handshaking connection was verified: a plain connection becomes a tunnel, a mux
    /// connection transport (it counts toward pausing accepts, not toward tunnels).
    func classify(_ channel: Channel, as kind: Tracked.Kind, limit: Int) {
        precondition(kind == .tunnel || kind == .muxCarrier, "only handshaking connections are classified")
        let acceptor = state.withLockedValue { state -> Channel? in
            let id = ObjectIdentifier(channel)
            guard let tracked = state.open[id], tracked.kind == .handshaking else { return nil }
            state.open[id]!.kind = kind
            state.listeners[tracked.listener]!.handshaking.removeAll { $0 == id }
            return establish(&state, listener: tracked.listener, tunnel: kind == .tunnel, limit: limit)
        }
        pause(acceptor)
    }

    /// Counts one more established connection; returns the acceptor to pause if that reached the limit.
    private func establish(_ state: inout State, listener: String, tunnel: Bool, limit: Int) -> Channel? {
        state.listeners[listener]!.established += 1
        if tunnel { state.listeners[listener]!.tunnels += 1 }
        return state.listeners[listener]!.established == limit ? state.listeners[listener]!.acceptor : nil
    }

    private func pause(_ acceptor: Channel?) {
        _ = acceptor?.setOption(ChannelOptions.autoRead, value: false)
    }

    private func watchClose(_ channel: Channel, listener: String, limit: Int) {
        let id = ObjectIdentifier(channel)
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            let resume = self.state.withLockedValue { state -> Channel? in
                guard let closed = state.open.removeValue(forKey: id) else { return nil }
                switch closed.kind {
                case .handshaking:
                    state.listeners[listener]!.handshaking.removeAll { $0 == id }
                    return nil
                case .tunnel, .stream, .muxCarrier:
                    state.listeners[listener]!.established -= 1
                    if closed.kind != .muxCarrier { state.listeners[listener]!.tunnels -= 1 }
                    return state.listeners[listener]!.established == limit - 1 ? state.listeners[listener]!.acceptor : nil
                }
            }
            _ = resume?.setOption(ChannelOptions.autoRead, value: true)
        }
    }

    /// Everything open on a listener, handshaking connections included.
    func count(_ listener: String) -> Int { state.withLockedValue { $0.open.values.filter { $0.listener == listener }.count } }
    func handshaking(_ listener: String) -> Int { state.withLockedValue { $0.listeners[listener]?.handshaking.count ?? 0 } }
    var total: Int { state.withLockedValue { $0.open.count } }
    var channels: [Tracked] { state.withLockedValue { Array($0.open.values) } }
}
