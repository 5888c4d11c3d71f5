import NIOCore
import Testing
@testable import SidecarMux

/// Receive-window growth on the wire: sampling PINGs, their ACKs, and the WINDOW_UPDATE a
/// grown stream window sends (ReceiveWindowTuningTests has the rule itself).
@Suite("Mux receive-window growth")
struct MuxWindowTests {
    static let kib = 1 << 10

    @Test("A PING's ACK carries its tag back; a keepalive PING's carries 0", arguments: [0, 1, 0x0102_0304_0506_0708, .max] as [UInt64])
    func pingTagRoundTrip(tag: UInt64) throws {
        let (client, server) = try MuxSessionTests.sessions()
        _ = try MuxSessionTests.exchange(client, server)
        if tag == 0 { client.ping() } else { client.ping(tag: tag) }
        let events = try MuxSessionTests.exchange(client, server)
        let acks = events.client.compactMap { event -> UInt64? in
            if case .pingAcknowledged(let tag) = event { return tag }
            return nil
        }
        #expect(acks == [tag])
        #expect(!events.server.contains { if case .pingAcknowledged = $0 { true } else { false } }, "a PING is not its own ACK")
    }

    /// Two sessions with one CONNECT stream, answered 200. nghttp2 holds both bodies unretained
    /// while the stream lives: the caller keeps them.
    static func answeredStream(settings: NGHTTP2Session.Settings = MuxSessionTests.settings,
                               upload: MuxSessionTests.Queue, download: MuxSessionTests.Queue) throws
        -> (client: NGHTTP2Session, server: NGHTTP2Session, id: Int32) {
        let allocator = ByteBufferAllocator()
        let client = try NGHTTP2Session(role: .client, settings: settings, allocator: allocator)
        let server = try NGHTTP2Session(role: .server, settings: settings, allocator: allocator)
        let id = try client.submitConnect(authority: "storage", source: upload)
        _ = try MuxSessionTests.exchange(client, server)
        server.submitResponse(streamID: id, status: 200, source: download)
        _ = try MuxSessionTests.exchange(client, server)
        return (client, server, id)
    }

    @Test("A larger stream window reaches the peer at once as credit for the difference")
    func setWindowCreditsPeer() throws {
        let upload = MuxSessionTests.Queue(), download = MuxSessionTests.Queue()
        try withExtendedLifetime((upload, download)) {
            let (client, server, id) = try Self.answeredStream(upload: upload, download: download)
            #expect(client.peerSendWindow(on: id) == 65535)
            server.setWindow(1 << 20, on: id)
            _ = try MuxSessionTests.exchange(client, server)
            #expect(client.peerSendWindow(on: id) == 1 << 20)
        }
    }

    @Test("A smaller window withholds credit without breaking flow control: the peer sends what it was given, then gets only the smaller window back")
    func setWindowSmallerWithholds() throws {
        let roomy = NGHTTP2Session.Settings(maxConcurrentStreams: 10, streamWindow: 1 << 20, connectionWindow: 1 << 26)
        let upload = MuxSessionTests.Queue(), download = MuxSessionTests.Queue()
        try withExtendedLifetime((upload, download)) {
            let (client, server, id) = try Self.answeredStream(settings: roomy, upload: upload, download: download)
            server.setWindow(4 << 20, on: id)
            _ = try MuxSessionTests.exchange(client, server)
            #expect(client.peerSendWindow(on: id) == 4 << 20)
            server.setWindow(1 << 20, on: id)
            _ = try MuxSessionTests.exchange(client, server)
            #expect(client.peerSendWindow(on: id) == 4 << 20, "credit given is not taken back")
            upload.chunks = [ByteBuffer(repeating: 1, count: 4 << 20)]
            client.resume(streamID: id)
            let events = try MuxSessionTests.exchange(client, server)
            let received = events.server.reduce(0) { total, event in
                if case .data(_, let bytes) = event { return total + bytes.readableBytes }
                return total
            }
            #expect(received == 4 << 20, "all of it accepted: no FLOW_CONTROL_ERROR")
            #expect(client.peerSendWindow(on: id) == 0)
            server.consumed(4 << 20, on: id)
            _ = try MuxSessionTests.exchange(client, server)
            #expect(client.peerSendWindow(on: id) == 1 << 20, "credit back up to the smaller window only")
        }
    }

    final class ManualClock {
        var now: Int64 = 0
    }

    /// Our client-side handler receives `first`, then `second` bytes on one stream while its
    /// sampling PING (sent on `first`) is on its way; then the ACK arrives, `roundTrip` ns
    /// after the PING left (the connection's first PING took 1 ns). `reading`: the stream's
    /// reader takes everything (autoRead), else nothing. Returns what the peer may send on
    /// the stream afterwards.
    static func peerWindowAfter(first: Int, second: Int, reading: Bool, roundTrip: Int64 = 1) throws -> Int {
        let clock = ManualClock()
        // One sample per doubling: each test's sample is judged alone (the rule's own tests
        // cover three in a row).
        var settings = MuxSettings(keepaliveInterval: .seconds(30))
        settings.windowSamplesPerDoubling = 1
        let harness = try MuxFlushTests.Harness(clock: { clock.now }, settings: settings)
        let body = MuxSessionTests.Queue()
        let (stream, id) = try harness.openAnsweredStream(answeringWith: body)
        try stream.setOption(ChannelOptions.autoRead, value: reading).wait()
        for count in [first, second] {
            body.chunks = [ByteBuffer(repeating: 7, count: count)]
            harness.peer.resume(streamID: id)
            try harness.peerToClient()
        }
        harness.loop.run()
        _ = try harness.eventsAtPeer()   // the PING (and any credit for data read)
        clock.now += roundTrip
        try harness.peerToClient()       // its ACK
        harness.loop.run()
        _ = try harness.eventsAtPeer()
        // nghttp2 holds the body unretained until the stream ends.
        return withExtendedLifetime(body) { harness.peer.peerSendWindow(on: id) }
    }

    @Test("Over a quarter of the window arriving within a PING's round trip, all of it read, doubles the stream's window: the peer gets the credit")
    func windowGrowsOnTheWire() throws {
        // 1 MiB grown to 2 MiB; the 616 KiB read were credited (being over half the window).
        #expect(try Self.peerWindowAfter(first: 16 * Self.kib, second: 600 * Self.kib, reading: true) == 2 << 20)
    }

    @Test("Less than a quarter of the window in the round trip: the window stays (a control for the test above)")
    func windowStaysOnTheWire() throws {
        // Still 1 MiB; the 216 KiB read are under half the window, not credited yet.
        #expect(try Self.peerWindowAfter(first: 16 * Self.kib, second: 200 * Self.kib, reading: true) == (1 << 20) - 216 * Self.kib)
    }

    @Test("Over half the window, all read, but in a round trip far longer than the connection's first (a queue): the window stays")
    func queueStaysOnTheWire() throws {
        #expect(try Self.peerWindowAfter(first: 16 * Self.kib, second: 600 * Self.kib, reading: true, roundTrip: 10) == 1 << 20)
    }

    @Test("Over half the window in the round trip but a reader that takes none of it: the window stays (a slow reader keeps 1 MiB)")
    func slowReaderStaysOnTheWire() throws {
        #expect(try Self.peerWindowAfter(first: 16 * Self.kib, second: 600 * Self.kib, reading: false) == (1 << 20) - 616 * Self.kib)
    }
}

/// A hostile peer's one-byte DATA frames, each in a TLS read of its own, to a stream whose
/// reader is stalled: the stream holds about what it was sent, not a 64 KiB buffer per frame.
@Suite("Mux stream memory under tiny frames")
struct MuxTinyFrameTests {
    @Test("2,000 one-byte DATA frames, each in its own 64 KiB input buffer, hold well under 64 KiB in all")
    func tinyFramesHoldLittle() throws {
        let harness = try MuxFlushTests.Harness()
        let body = MuxSessionTests.Queue()
        let (stream, id) = try harness.openAnsweredStream(answeringWith: body)
        try stream.setOption(ChannelOptions.autoRead, value: false).wait()
        for index in 0..<2_000 {
            body.chunks = [ByteBuffer(bytes: [UInt8(truncatingIfNeeded: index)])]
            harness.peer.resume(streamID: id)
            while let frames = try harness.peer.sendJoined(limit: 1 << 20) {
                var input = ByteBufferAllocator().buffer(capacity: 64 * 1024)
                input.writeImmutableBuffer(frames)
                try harness.channel.writeInbound(input)
            }
        }
        let held = (stream as! MuxStreamChannel).inbound
        #expect(held.bytes == 2_000)
        #expect(held.held.storage < 64 * 1024, "held \(held.held)")
        #expect(held.held.chunks <= 3, "small payloads share buffers: \(held.held)")
        withExtendedLifetime(body) {}
    }
}
