import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Every accepted connection and mux stream, per listener, from accept to close: for
/// connection limits, for draining on shutdown, and for the admin API's counts.
///
/// Two counts per listener. Everything open pauses accepting at `max_connections` (clients
/// wait in the kernel's backlog instead of being accepted and dropped). Tunnels, the verified
/// plain connections and the mux streams, are what mux streams are admitted against: a
/// connection still in its handshake (or a half-open flood of them) never turns a legitimate
/// stream away, and neither does the mux connection carrying it.
final class ConnectionTracker: Sendable {
    struct Tracked {
        enum Kind {
            /// Accepted, not (yet) a verified plain connection or a mux connection.
            case accepted
            /// A verified plain connection: one tunnel.
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

    private struct State {
        /// Keyed by the channel, which the entry keeps alive until its close removes it.
        var open: [ObjectIdentifier: Tracked] = [:]
        var counts: [String: Int] = [:]
        /// Of those, the tunnels.
        var tunnels: [String: Int] = [:]
        /// Each listener's server channel, paused while the listener is at its limit.
        var acceptors: [String: Channel] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Registers an accepted channel. When the listener reaches `limit`, its server channel
    /// stops reading (accepting) until something closes. (NIO may accept up to
    /// maxMessagesPerRead, 4, in the burst that reaches the limit.)
    func track(_ channel: Channel, listener: String, limit: Int) {
        _ = add(channel, listener: listener, limit: limit, acceptor: channel.parent, kind: .accepted)
    }

    /// Registers a stream opened on an accepted mux connection, unless the listener already
    /// has `limit` tunnels (false: there is no backlog to leave a stream waiting in; the caller
    /// refuses it).
    func admit(_ stream: Channel, listener: String, limit: Int) -> Bool {
        add(stream, listener: listener, limit: limit, acceptor: nil, kind: .stream)
    }

    /// An accepted connection was verified: a plain connection becomes a tunnel, a mux
    /// connection transport (it still counts toward pausing accepts, not toward tunnels).
    func classify(_ channel: Channel, as kind: Tracked.Kind) {
        precondition(kind == .tunnel || kind == .muxCarrier, "only accepted connections are classified")
        state.withLockedValue { state in
            let id = ObjectIdentifier(channel)
            guard let tracked = state.open[id], tracked.kind == .accepted else { return }
            state.open[id]!.kind = kind
            if kind == .tunnel { state.tunnels[tracked.listener, default: 0] += 1 }
        }
    }

    private func add(_ channel: Channel, listener: String, limit: Int, acceptor: Channel?, kind: Tracked.Kind) -> Bool {
        let id = ObjectIdentifier(channel)
        let admitted = state.withLockedValue { state -> (count: Int, acceptor: Channel?)? in
            if let acceptor { state.acceptors[listener] = acceptor }
            if kind == .stream {
                guard state.tunnels[listener, default: 0] < limit else { return nil }
                state.tunnels[listener, default: 0] += 1
            }
            let count = state.counts[listener, default: 0] + 1
            state.open[id] = Tracked(listener: listener, channel: channel, kind: kind)
            state.counts[listener] = count
            return (count, state.acceptors[listener])
        }
        guard let (count, acceptor) = admitted else { return false }
        if count == limit { _ = acceptor?.setOption(ChannelOptions.autoRead, value: false) }
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            let remaining = self.state.withLockedValue { state -> Int in
                if let closed = state.open.removeValue(forKey: id), closed.kind == .tunnel || closed.kind == .stream {
                    state.tunnels[listener, default: 1] -= 1
                }
                state.counts[listener, default: 1] -= 1
                return state.counts[listener]!
            }
            if remaining == limit - 1 { _ = acceptor?.setOption(ChannelOptions.autoRead, value: true) }
        }
        return true
    }

    func count(_ listener: String) -> Int { state.withLockedValue { $0.counts[listener] ?? 0 } }
    var total: Int { state.withLockedValue { $0.open.count } }
    var channels: [Tracked] { state.withLockedValue { Array($0.open.values) } }
}
