import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Every tunnel, per listener, from accept to close: for connection limits (accepting pauses
/// at the limit instead of accepting and dropping), for draining on shutdown, and for the admin
/// API's counts. A tunnel is an accepted connection or a stream on an accepted mux connection;
/// both count toward the listener's `max_connections`.
final class ConnectionTracker: Sendable {
    struct Tracked {
        var listener: String
        var channel: Channel
        /// A stream on a mux connection (whose channel is its `parent`).
        var isStream: Bool
        /// An accepted connection that turned out to carry the mux: transport, not a tunnel.
        var isMuxCarrier = false
    }

    private struct State {
        /// Keyed by the channel, which the entry keeps alive until its close removes it.
        var open: [ObjectIdentifier: Tracked] = [:]
        var counts: [String: Int] = [:]
        /// Of those, mux connections (streams are admitted against the count without them).
        var carriers: [String: Int] = [:]
        /// Each listener's server channel, paused while the listener is at its limit.
        var acceptors: [String: Channel] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Registers an accepted channel. When the listener reaches `limit`, its server channel
    /// stops reading (accepting) until a tunnel closes: clients wait in the kernel's backlog
    /// rather than being refused. (NIO may accept up to maxMessagesPerRead, 4, in the burst
    /// that reaches the limit.)
    func track(_ channel: Channel, listener: String, limit: Int) {
        _ = add(channel, listener: listener, limit: limit, acceptor: channel.parent, refuseAtLimit: false)
    }

    /// Registers a stream opened on an accepted mux connection, unless the listener already
    /// has `limit` tunnels (false: there is no backlog to leave a stream waiting in; the caller
    /// refuses it). Mux connections do not count here: `limit` streams fit however many
    /// connections carry them.
    func admit(_ stream: Channel, listener: String, limit: Int) -> Bool {
        add(stream, listener: listener, limit: limit, acceptor: nil, refuseAtLimit: true)
    }

    /// An accepted connection negotiated the mux. It still counts toward pausing accepts (it
    /// holds a socket and TLS state), but not toward the tunnels streams are admitted against.
    func markMuxCarrier(_ channel: Channel) {
        state.withLockedValue { state in
            let id = ObjectIdentifier(channel)
            guard let tracked = state.open[id], !tracked.isMuxCarrier else { return }
            state.open[id]!.isMuxCarrier = true
            state.carriers[tracked.listener, default: 0] += 1
        }
    }

    private func add(_ channel: Channel, listener: String, limit: Int, acceptor: Channel?, refuseAtLimit: Bool) -> Bool {
        let id = ObjectIdentifier(channel)
        let admitted = state.withLockedValue { state -> (count: Int, acceptor: Channel?)? in
            if let acceptor { state.acceptors[listener] = acceptor }
            let count = state.counts[listener] ?? 0
            if refuseAtLimit && count - (state.carriers[listener] ?? 0) >= limit { return nil }
            state.open[id] = Tracked(listener: listener, channel: channel, isStream: refuseAtLimit)
            state.counts[listener] = count + 1
            return (count + 1, state.acceptors[listener])
        }
        guard let (count, acceptor) = admitted else { return false }
        if count == limit { _ = acceptor?.setOption(ChannelOptions.autoRead, value: false) }
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            let remaining = self.state.withLockedValue { state -> Int in
                if state.open.removeValue(forKey: id)?.isMuxCarrier == true { state.carriers[listener, default: 1] -= 1 }
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
