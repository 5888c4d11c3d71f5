import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import SidecarCore
import TestFixtures
import TestSupport

/// The compactor on real sockets. A stalled app is a server that does not read, with both
/// kernel buffers made small, so a 1 MiB write leaves NIO holding a queue whatever the host.
@Suite("Pending write compactor")
struct PendingWriteCompactorTests {
    /// Below the compactor: what reaches NIO's queue, entry by entry.
    final class Entries: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = IOData
        private(set) var sizes: [Int] = []
        private(set) var capacities: [Int] = []
        private(set) var addresses: [UInt] = []

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            if case .byteBuffer(let buffer) = unwrapOutboundIn(data) {
                sizes.append(buffer.readableBytes)
                capacities.append(buffer.storageCapacity)
                addresses.append(buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) })
            }
            context.write(data, promise: promise)
        }
    }

    /// A connected pair: `client` with the compactor over `entries`; `app`, the accepted side,
    /// unread until `release`, then collecting everything into `received`.
    final class Pair: @unchecked Sendable {
        let client: Channel
        let app: Channel
        let server: Channel
        let entries: Entries
        let received: Received

        init(client: Channel, app: Channel, server: Channel, entries: Entries, received: Received) {
            self.client = client
            self.app = app
            self.server = server
            self.entries = entries
            self.received = received
        }

        static func connect(smallKernelBuffers: Bool) async throws -> Pair {
            let group = MultiThreadedEventLoopGroup.singleton
            let loop = group.next()
            let received = Received()
            let accepted = loop.makePromise(of: Channel.self)
            let server = try await ServerBootstrap(group: loop)
                .serverChannelOption(ChannelOptions.socketOption(.so_rcvbuf), value: smallKernelBuffers ? 4096 : 1 << 20)
                .childChannelOption(ChannelOptions.autoRead, value: !smallKernelBuffers)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(received)
                        accepted.succeed(channel)
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            let entries = Entries()
            let client = try await ClientBootstrap(group: loop)
                .channelOption(ChannelOptions.socketOption(.so_sndbuf), value: smallKernelBuffers ? 4096 : 1 << 20)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try ProxyChannelOptions.configure(channel)
                        try channel.pipeline.syncOperations.addHandlers(entries, PendingWriteCompactor(), OrderedHalfCloseHandler())
                    }
                }
                .connect(to: server.localAddress!).get()
            let app = try await accepted.futureResult.get()
            return Pair(client: client, app: app, server: server, entries: entries, received: received)
        }

        /// Connected with small kernel buffers, and a 1 MiB head written and left unread, so
        /// NIO holds a queue for the app whatever the host: the pair and the head.
        static func stalled() async throws -> (Pair, [UInt8]) {
            let pair = try await connect(smallKernelBuffers: true)
            let head = PendingWriteCompactorTests.pattern(1 << 20, seed: 1)
            try await pair.writeFlushed([head])
            return (pair, head)
        }

        /// The app starts reading; everything written must arrive as `expected`.
        func releaseAndExpect(_ expected: [UInt8]) async {
            try? await release()
            #expect(await eventually { received.all.count >= expected.count })
            #expect(received.all == expected, "in order, none lost")
        }

        /// The app starts reading.
        func release() async throws {
            let app = self.app
            try await app.eventLoop.submit { try app.setAutoReadNow(true) }.get()
        }

        func close() async {
            try? await client.close()
            try? await app.close()
            try? await server.close()
        }

        func buffered() async throws -> Int {
            let client = self.client
            return try await client.eventLoop.submit { try client.syncOptions!.getOption(ChannelOptions.bufferedWritableBytes) }.get()
        }

        /// Writes each piece on the event loop, each flushed on its own, as the glue would
        /// after each read of a trickling peer; `inCapacity`: each in a buffer that large, as
        /// TLS hands over what it decrypted into a 64 KiB one.
        func writeFlushed(_ pieces: [[UInt8]], inCapacity capacity: Int = 0) async throws {
            let client = self.client
            try await client.eventLoop.submit {
                for piece in pieces {
                    var buffer = client.allocator.buffer(capacity: max(capacity, piece.count))
                    buffer.writeBytes(piece)
                    client.write(buffer, promise: nil)
                    client.flush()
                }
            }.get()
        }
    }

    final class Received: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        private let bytes = NIOLockedValueBox<[UInt8]>([])
        private let ended = NIOLockedValueBox(false)
        var all: [UInt8] { bytes.withLockedValue { $0 } }
        var sawEOF: Bool { ended.withLockedValue { $0 } }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            let chunk = buffer.readBytes(length: buffer.readableBytes)!
            bytes.withLockedValue { $0 += chunk }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { ended.withLockedValue { $0 = true } }
        }

        func channelInactive(context: ChannelHandlerContext) {
            ended.withLockedValue { $0 = true }
        }
    }

    static func pattern(_ count: Int, seed: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 31) &+ seed) } }

    /// Right-sized writes (a mux payload's copy) may go down unchecked a few times: eight
    /// before a check finds the backlog.
    @Test("10,000 one-byte writes to a stalled app: a dozen entries queue, not 10,000, and every byte arrives in order",
          arguments: [(65536, [1 << 20, 1, 4096, 4096]),
                      (1, [1 << 20] + Array(repeating: 1, count: 9) + [4096, 4096])])
    func trickleIntoStalledApp(capacity: Int, entries: [Int]) async throws {
        let (pair, head) = try await Pair.stalled()
        await withTeardown({ await pair.close() }) {
            #expect((try? await pair.buffered()) ?? 0 > 0, "the app's socket is backed up")
            let trickle = Self.pattern(10_000, seed: 3)
            try? await pair.writeFlushed(trickle.map { [$0] }, inCapacity: capacity)

            let sizes = pair.entries.sizes
            // The 1 MiB write; the unchecked ones; the first gathered byte, tracked; two full
            // 4 KiB pieces. The rest waits.
            #expect(sizes == entries, "entries queued: \(sizes.count)")
            await pair.releaseAndExpect(head + trickle)
        }
    }

    @Test("A socket that keeps up: small writes pass as they are, uncopied")
    func keepingUpPassesUncopied() async throws {
        let pair = try await Pair.connect(smallKernelBuffers: false)
        await withTeardown({ await pair.close() }) {
            let client = pair.client
            let addresses = try? await client.eventLoop.submit { () -> [UInt] in
                (0..<200).map { index -> UInt in
                    let buffer = client.allocator.buffer(bytes: Self.pattern(100, seed: index))
                    client.write(buffer, promise: nil)
                    client.flush()
                    return buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
                }
            }.get()
            #expect(pair.entries.addresses == addresses, "each write reached NIO as the buffer it was")
            let expected = (0..<200).flatMap { Self.pattern(100, seed: $0) }
            #expect(await eventually { pair.received.all.count >= expected.count })
            #expect(pair.received.all == expected)
        }
    }

    @Test("4 KiB writes each alone in a 64 KiB buffer, into a stalled app: queued as copies of their size, in order")
    func wastefulCopied() async throws {
        let (pair, head) = try await Pair.stalled()
        await withTeardown({ await pair.close() }) {
            let pieces = (0..<50).map { Self.pattern(4096, seed: $0) }
            try? await pair.writeFlushed(pieces, inCapacity: 64 * 1024) // as TLS decrypts a record
            #expect(pair.entries.sizes == [1 << 20] + Array(repeating: 4096, count: 50))
            #expect(pair.entries.capacities.dropFirst().allSatisfy { $0 == 4096 }, "\(pair.entries.capacities)")
            await pair.releaseAndExpect(head + pieces.flatMap { $0 })
        }
    }

    @Test("Small, large, awaited writes and a write shutdown, into a stalled app: all in order, then EOF")
    func mixedWritesKeepOrder() async throws {
        let (pair, head) = try await Pair.stalled()
        await withTeardown({ await pair.close() }) {
            let small1 = Self.pattern(10, seed: 2), small1b = Self.pattern(20, seed: 7), small1c = Self.pattern(30, seed: 8), large = Self.pattern(100_000, seed: 3)
            let small2 = Self.pattern(3000, seed: 4), awaited = Self.pattern(5, seed: 5), small3 = Self.pattern(7, seed: 6)
            let client = pair.client
            let done = try? await client.eventLoop.submit { () -> EventLoopFuture<Void> in
                client.write(client.allocator.buffer(bytes: small1), promise: nil)
                client.write(client.allocator.buffer(bytes: small1b), promise: nil)
                client.write(client.allocator.buffer(bytes: small1c), promise: nil)
                client.flush()
                client.write(client.allocator.buffer(bytes: large), promise: nil)
                client.write(client.allocator.buffer(bytes: small2), promise: nil)
                let awaitedWrite = client.eventLoop.makePromise(of: Void.self)
                client.write(client.allocator.buffer(bytes: awaited), promise: awaitedWrite)
                client.write(client.allocator.buffer(bytes: small3), promise: nil)
                client.flush()
                client.close(mode: .output, promise: nil)
                return awaitedWrite.futureResult
            }.get()
            // small1 unchecked; small1b and small1c together, tracked; small2 before the awaited
            // write; small3 before the empty write the shutdown waits on.
            #expect(pair.entries.sizes == [1 << 20, 10, 50, 100_000, 3000, 5, 7, 0])
            try? await pair.release()
            let expected = head + small1 + small1b + small1c + large + small2 + awaited + small3
            #expect(await eventually { pair.received.sawEOF })
            #expect(pair.received.all == expected)
            #expect((try? await done?.get()) != nil, "the awaited write completed")
        }
    }
}
