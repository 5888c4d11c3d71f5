import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Every accepted connection, per listener, from accept to close: for connection limits
/// (accepting pauses at the limit instead of accepting and dropping), for draining on
/// shutdown, and for the admin API's counts.
final class ConnectionTracker: Sendable {
    private struct State {
        var nextID: UInt64 = 1
        var open: [UInt64: (listener: String, channel: Channel)] = [:]
        var counts: [String: Int] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Registers an accepted channel. When the listener reaches `limit`, its server channel
    /// stops reading (accepting) until a connection closes: clients wait in the kernel's
    /// backlog rather than being refused. (NIO may accept up to maxMessagesPerRead, 4, in the
    /// burst that reaches the limit.)
    func track(_ channel: Channel, listener: String, limit: Int) {
        let (id, count) = state.withLockedValue { state -> (UInt64, Int) in
            let id = state.nextID
            state.nextID += 1
            state.open[id] = (listener, channel)
            state.counts[listener, default: 0] += 1
            return (id, state.counts[listener]!)
        }
        let server = channel.parent
        if count == limit { _ = server?.setOption(ChannelOptions.autoRead, value: false) }
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            let remaining = self.state.withLockedValue { state -> Int in
                state.open.removeValue(forKey: id)
                state.counts[listener, default: 1] -= 1
                return state.counts[listener]!
            }
            if remaining == limit - 1 { _ = server?.setOption(ChannelOptions.autoRead, value: true) }
        }
    }

    func count(_ listener: String) -> Int { state.withLockedValue { $0.counts[listener] ?? 0 } }
    var total: Int { state.withLockedValue { $0.open.count } }
    var channels: [(listener: String, channel: Channel)] { state.withLockedValue { Array($0.open.values) } }
}
