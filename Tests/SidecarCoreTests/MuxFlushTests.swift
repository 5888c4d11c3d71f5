import NIOCore
import NIOEmbedded
import Testing
@testable import SidecarMux
import SidecarTLS

/// When a mux connection's frames reach the socket: streams that become ready in one turn of
/// the event loop share a flush (one TLS record, one write), a lone stream's frames go at once.
@Suite("Mux flush coalescing")
struct MuxFlushTests {
    /// Counts the flushes that pass toward the socket, and the most bytes any one carried.
    final class FlushCounter: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        var flushes = 0
        var largestFlush = 0
        /// Runs once, inside the next flush, before it passes on.
        var onNextFlush: (() -> Void)?
        private var pending = 0
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            pending += unwrapOutboundIn(data).readableBytes
            context.write(data, promise: promise)
        }
        func flush(context: ChannelHandlerContext) {
            if let hook = onNextFlush {
                onNextFlush = nil
                hook()
            }
            flushes += 1
            largestFlush = max(largestFlush, pending)
            pending = 0
            context.flush()
        }
    }

    /// A response body that never sends anything and never ends: the stream stays open both ways.
    final class Silence: MuxOutboundSource {
        var outboundState: (queued: Int, ended: Bool) { (0, false) }
        func canSend(_ count: Int) -> Bool { true }
        func takeOutbound(_ count: Int, endsStream: Bool, into frames: inout OutboundFrames) {}
    }

    struct Harness {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let handler: MuxConnectionHandler
        let counter = FlushCounter()
        let peer: NGHTTP2Session

        /// `clock`: what the handler's window tuning reads as the time (default: the real one).
        init(peerStreamWindow: Int32 = 65535, clock: (() -> Int64)? = nil,
             settings: MuxSettings = MuxSettings(keepaliveInterval: .seconds(30))) throws {
            handler = MuxConnectionHandler(role: .client, settings: settings)
            if let clock { handler.clock = clock }
            channel = EmbeddedChannel(loop: loop)
            // Room for every stream a test opens (the shared test settings allow 10).
            let settings = NGHTTP2Session.Settings(maxConcurrentStreams: 100, streamWindow: peerStreamWindow, connectionWindow: 1 << 20)
            peer = try NGHTTP2Session(role: .server, settings: settings, allocator: ByteBufferAllocator())
            try channel.pipeline.syncOperations.addHandler(counter)
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        /// What has reached the peer so far (flushed bytes only): its events.
        func eventsAtPeer() throws -> [NGHTTP2Session.Event] {
            while let bytes = try channel.readOutbound(as: ByteBuffer.self) { try peer.receive(bytes) }
            return peer.takeEvents()
        }

        /// The authorities of the CONNECTs that have reached the peer so far.
        func connectsAtPeer() throws -> [String] {
            try eventsAtPeer().compactMap { event in
                guard case .request(_, let headers) = event else { return nil }
                return headers.first { $0.name == ":authority" }?.value
            }
        }

        func peerToClient() throws {
            while let bytes = try peer.sendJoined(limit: 1 << 20) { try channel.writeInbound(bytes) }
        }

        /// One stream, opened and answered 200 with `body` (what the peer sends on it), with
        /// what both sides exchanged so far consumed; nothing has read the stream yet. The body
        /// must outlive the test: nghttp2 holds it unretained.
        func openAnsweredStream(answeringWith body: MuxOutboundSource) throws -> (stream: Channel, id: Int32) {
            let opened = handler.openStream(authority: "storage")
            guard case .request(let id, _)? = try eventsAtPeer().first(where: { if case .request = $0 { true } else { false } }) else {
                throw MuxError.streamRefused("no CONNECT reached the peer")
            }
            peer.submitResponse(streamID: id, status: 200, source: body)
            try peerToClient()
            let stream = try opened.wait()
            loop.run()
            _ = try eventsAtPeer()
            return (stream, id)
        }
    }

    @Test("A lone stream's CONNECT is flushed at once, without waiting for the end of the turn")
    func loneStreamFlushesAtOnce() throws {
        let harness = try Harness()
        let before = harness.counter.flushes
        _ = harness.handler.openStream(authority: "storage")
        #expect(harness.counter.flushes == before + 1)
        #expect(try harness.connectsAtPeer() == ["storage"])
    }

    @Test("CONNECTs of streams opened in one turn leave in one flush at the turn's end, in order", arguments: [2, 3, 8, 64])
    func streamsOfOneTurnShareAFlush(streams: Int) throws {
        let harness = try Harness()
        let before = harness.counter.flushes
        let names = (0..<streams).map { "storage-\($0)" }
        for name in names { _ = harness.handler.openStream(authority: name) }
        // The first stream was alone when it opened: flushed at once. The rest wait.
        #expect(harness.counter.flushes == before + 1)
        #expect(try harness.connectsAtPeer() == [names[0]])
        harness.loop.run()
        #expect(harness.counter.flushes == before + 2)
        #expect(try harness.connectsAtPeer() == Array(names.dropFirst()))
        // Nothing is owed any more: another turn flushes nothing.
        harness.loop.run()
        #expect(harness.counter.flushes == before + 2)
    }

    @Test("A write made while the carrier flushes goes out in the same pump, not at the next event")
    func writeDuringFlushIsSent() throws {
        let harness = try Harness()
        let body = Silence() // nghttp2 holds it unretained
        let (stream, _) = try harness.openAnsweredStream(answeringWith: body)
        // What a write promise completed by the socket's flush could do.
        harness.counter.onNextFlush = { stream.writeAndFlush(ByteBuffer(string: "second"), promise: nil) }
        stream.writeAndFlush(ByteBuffer(string: "first"), promise: nil)
        // No loop.run(): a lone stream's frames are flushed within the pump.
        let data = try harness.eventsAtPeer().compactMap { event -> String? in
            guard case .data(_, let bytes) = event else { return nil }
            return String(buffer: bytes)
        }
        #expect(data.joined() == "firstsecond")
        withExtendedLifetime(body) {}
    }

    @Test("A frame prepared before an abort never goes out: no stand-in bytes, no END_STREAM, a reset")
    func heldFrameOfAnAbortedStream() throws {
        let harness = try Harness(peerStreamWindow: 1 << 20)
        let body = Silence()
        let (stream, id) = try harness.openAnsweredStream(answeringWith: body)

        // 4 full 64 KiB frames fill a send chunk; the fifth, the last 10 bytes with END_STREAM,
        // is prepared and held. The socket then stops taking writes, and the stream is aborted.
        let length = 4 * 65536 + 10
        harness.channel.isWritable = false
        stream.write(ByteBuffer(repeating: 0x61, count: length), promise: nil)
        stream.close(mode: .output, promise: nil)
        harness.counter.onNextFlush = { harness.channel.isWritable = false }
        harness.channel.isWritable = true
        harness.channel.pipeline.fireChannelWritabilityChanged()
        stream.triggerUserOutboundEvent(TLSAbortRequest(), promise: nil)
        harness.channel.isWritable = true
        harness.channel.pipeline.fireChannelWritabilityChanged()
        harness.loop.run()

        var delivered = 0, ended = false, resetCode: UInt32?
        for event in try harness.eventsAtPeer() {
            switch event {
            case .data(let streamID, let bytes) where streamID == id:
                delivered += bytes.readableBytes
                #expect(bytes.readableBytesView.allSatisfy { $0 == 0x61 }, "bytes that were never written reached the peer")
            case .endOfInput(let streamID) where streamID == id: ended = true
            case .closed(let streamID, let code) where streamID == id: resetCode = code
            default: break
            }
        }
        #expect(delivered == 4 * 65536, "only the frames sent before the abort")
        #expect(!ended, "an aborted stream must not end cleanly")
        #expect(resetCode.map { $0 != 0 } ?? false, "the peer sees a reset (code \(String(describing: resetCode)))")
        withExtendedLifetime(body) {}
    }

    @Test("Streams that all send in one turn still flush every 256 KiB, not all at the turn's end")
    func busyTurnFlushesPerChunk() throws {
        let harness = try Harness()
        let opened = (0..<8).map { harness.handler.openStream(authority: "storage-\($0)") }
        harness.loop.run()
        var bodies: [Silence] = [] // nghttp2 holds its data sources unretained
        for event in try harness.eventsAtPeer() {
            guard case .request(let id, _) = event else { continue }
            bodies.append(Silence())
            harness.peer.submitResponse(streamID: id, status: 200, source: bodies[bodies.count - 1])
        }
        try harness.peerToClient()
        let streams = try opened.map { try $0.wait() }
        harness.loop.run() // what answering the peer left owed goes out first
        let flushesBefore = harness.counter.flushes
        let perStream = 60_000 // within the peer's 64 KiB stream window
        for stream in streams {
            stream.writeAndFlush(ByteBuffer(repeating: 0x61, count: perStream), promise: nil)
        }
        // 480 kB were framed in this turn: one flush on the way, once 256 KiB were owed.
        #expect(harness.counter.flushes == flushesBefore + 1)
        harness.loop.run()
        #expect(harness.counter.flushes == flushesBefore + 2)
        #expect(harness.counter.largestFlush < 2 * MuxConnectionHandler.sendChunk)
        let delivered = try harness.eventsAtPeer().reduce(0) { total, event in
            guard case .data(_, let bytes) = event else { return total }
            return total + bytes.readableBytes
        }
        #expect(delivered == streams.count * perStream)
        withExtendedLifetime(bodies) {}
    }
}
