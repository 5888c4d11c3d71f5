import NIOCore
import NIOEmbedded
@testable import SidecarCore
import Testing

/// The idle timeout's callback: due when the connection would have been idle for the timeout,
/// moved on by traffic, gone with the connection. The channels are embedded, on one loop whose
/// clock the tests move; activity is stamped from that clock (the glue stamps the real one,
/// which is the loop's clock on a real event loop).
@Suite("Idle watch")
struct IdleWatchTests {
    final class NoticeCounter: @unchecked Sendable {
        var count = 0
    }

    struct Harness {
        let loop = EmbeddedEventLoop()
        let mesh: EmbeddedChannel
        let local: EmbeddedChannel
        let stats = ConnectionStats(meter: nil)
        let timeout = TimeAmount.seconds(60)
        let notices = NoticeCounter()

        init() throws {
            mesh = EmbeddedChannel(loop: loop)
            local = EmbeddedChannel(loop: loop)
            try mesh.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try local.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
            stats.lastActivity = loop.now
        }

        func arm() {
            let notices = self.notices
            IdleTimeout.arm(timeout, stats: stats, mesh: mesh, local: local) { notices.count += 1 }
        }

        var bothOpen: Bool { mesh.isActive && local.isActive }
        var bothClosed: Bool { !mesh.isActive && !local.isActive }
    }

    @Test("Silent for the whole timeout: both channels are closed at that moment, once, with one notice")
    func silentConnectionIsClosed() throws {
        let harness = try Harness()
        harness.arm()
        harness.loop.advanceTime(by: harness.timeout - .nanoseconds(1))
        #expect(harness.bothOpen)
        harness.loop.advanceTime(by: .nanoseconds(1))
        #expect(harness.bothClosed)
        harness.loop.advanceTime(by: harness.timeout * 3)
        #expect(harness.notices.count == 1)
    }

    @Test("Traffic within every timeout keeps the connection open; silence after it closes it", arguments: [1, 5])
    func activeConnectionStays(turns: Int) throws {
        let harness = try Harness()
        harness.arm()
        for _ in 0..<turns {
            harness.loop.advanceTime(by: .seconds(45))
            harness.stats.lastActivity = harness.loop.now // a read
            // The callback comes due 15 s later, finds 15 s of silence and moves on.
            harness.loop.advanceTime(by: .seconds(45))
            #expect(harness.bothOpen)
            harness.stats.lastActivity = harness.loop.now
        }
        #expect(harness.notices.count == 0)
        harness.loop.advanceTime(by: harness.timeout - .nanoseconds(1))
        #expect(harness.bothOpen)
        harness.loop.advanceTime(by: .nanoseconds(1))
        #expect(harness.bothClosed)
        #expect(harness.notices.count == 1)
    }

    @Test("Closed on both sides: the callback is cancelled and lets go of the connection")
    func closedConnectionReleasesTheWatch() throws {
        let harness = try Harness()
        weak var released: IdleWatch?
        do {
            let notices = harness.notices
            let watch = IdleWatch(timeout: harness.timeout, stats: harness.stats, mesh: harness.mesh, local: harness.local) {
                notices.count += 1
            }
            watch.schedule()
            harness.mesh.closeFuture.and(harness.local.closeFuture).whenComplete { _ in watch.cancel() }
            released = watch
        }
        #expect(released != nil, "the scheduled callback holds the watch while the connection is open")
        _ = try harness.mesh.finish()
        #expect(released != nil, "one side closed: still watched")
        _ = try harness.local.finish()
        #expect(released == nil)
        harness.loop.advanceTime(by: harness.timeout * 2)
        #expect(harness.notices.count == 0)
    }
}
