import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Every tunnel, per listener, from accept to close: for connection limits (accepting pauses
/// at the limit instead of accepting and dropping), for draining on shutdown, and for the admin
/// API's counts. A tunnel is an accepted connection or a stream on an accepted mux connection;
/// both count toward the listener's `max_connections` (so does the mux connection itself).
final class ConnectionTracker: Sendable {
    struct Tracked {
        var listener: String
        var channel: Channel
        /// A stream on a mux connection (whose channel is its `parent`).
        var isStream: Bool
    }

    private struct State {
        var nextID: UInt64 = 1
        var open: [UInt64: Tracked] = [:]
        var counts: [String: Int] = [:]
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

    /// Registers a stream opened on an accepted mux connection, unless the listener is at its
    /// limit (false: there is no backlog to leave a stream waiting in; the caller refuses it).
    func admit(_ stream: Channel, listener: String, limit: Int) -> Bool {
        add(stream, listener: listener, limit: limit, acceptor: nil, refuseAtLimit: true)
    }

    private func add(_ channel: Channel, listener: String, limit: Int, acceptor: Channel?, refuseAtLimit: Bool) -> Bool {
        let admitted = state.withLockedValue { state -> (id: UInt64, count: Int, acceptor: Channel?)? in
            if let acceptor { state.acceptors[listener] = acceptor }
            let count = state.counts[listener] ?? 0
            if refuseAtLimit && count >= limit { return nil }
            let id = state.nextID
            state.nextID += 1
            state.open[id] = Tracked(listener: listener, channel: channel, isStream: refuseAtLimit)
            state.counts[listener] = count + 1
            return (id, count + 1, state.acceptors[listener])
        }
        guard let (id, count, acceptor) = admitted else { return false }
        if count == limit { _ = acceptor?.setOption(ChannelOptions.autoRead, value: false) }
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            let remaining = self.state.withLockedValue { state -> Int in
                state.open.removeValue(forKey: id)
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
