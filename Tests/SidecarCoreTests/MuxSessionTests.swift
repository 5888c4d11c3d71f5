import NIOCore
import Testing
import TestFixtures
@testable import SidecarMux

extension NGHTTP2Session {
    /// One send's frames joined: these tests feed and inspect bytes, not write boundaries.
    func sendJoined(limit: Int) throws -> ByteBuffer? {
        let frames = try send(limit: limit)
        guard !frames.isEmpty else { return nil }
        var joined = ByteBuffer()
        frames.forEach { joined.writeImmutableBuffer($0) }
        return joined
    }
}

/// The nghttp2 session wrapper on its own: two sessions wired back to back in memory.
@Suite("Mux session (nghttp2)")
struct MuxSessionTests {
    final class Queue: MuxOutboundSource {
        var chunks: [ByteBuffer] = []
        var ended = false
        var outboundState: (queued: Int, ended: Bool) { (chunks.reduce(0) { $0 + $1.readableBytes }, ended) }
        func canSend(_ count: Int) -> Bool { true }
        func takeOutbound(_ count: Int, endsStream: Bool, into frames: inout OutboundFrames) {
            var remaining = count
            while remaining > 0 {
                var first = chunks.removeFirst()
                var slice = first.readSlice(length: min(remaining, first.readableBytes))!
                remaining -= slice.readableBytes
                frames.append(payload: &slice)
                if first.readableBytes > 0 { chunks.insert(first, at: 0) }
            }
        }
    }

    static let settings = NGHTTP2Session.Settings(maxConcurrentStreams: 10, streamWindow: 65535, connectionWindow: 1 << 20)

    static func sessions() throws -> (client: NGHTTP2Session, server: NGHTTP2Session) {
        let allocator = ByteBufferAllocator()
        return (try NGHTTP2Session(role: .client, settings: settings, allocator: allocator),
                try NGHTTP2Session(role: .server, settings: settings, allocator: allocator))
    }

    /// Moves bytes both ways until neither side has anything to send; returns each side's events.
    static func exchange(_ client: NGHTTP2Session, _ server: NGHTTP2Session) throws -> (client: [NGHTTP2Session.Event], server: [NGHTTP2Session.Event]) {
        var clientEvents: [NGHTTP2Session.Event] = [], serverEvents: [NGHTTP2Session.Event] = []
        for _ in 0..<50 {
            var moved = false
            if let bytes = try client.sendJoined(limit: 1 << 20) { try server.receive(bytes); moved = true }
            if let bytes = try server.sendJoined(limit: 1 << 20) { try client.receive(bytes); moved = true }
            clientEvents += client.takeEvents()
            serverEvents += server.takeEvents()
            if !moved { break }
        }
        return (clientEvents, serverEvents)
    }

    @Test("CONNECT opens a stream with its authority; 200, data both ways and END_STREAM close it cleanly")
    func connectRoundTrip() throws {
        let (client, server) = try Self.sessions()
        let upload = Queue(), download = Queue()
        let id = try client.submitConnect(authority: "storage", source: upload)
        var (_, serverEvents) = try Self.exchange(client, server)
        guard case .request(let requestID, let headers) = serverEvents.first else {
            Issue.record("no request: \(serverEvents)")
            return
        }
        #expect(requestID == id)
        #expect(headers.contains { $0.name == ":method" && $0.value == "CONNECT" })
        #expect(headers.contains { $0.name == ":authority" && $0.value == "storage" })

        server.submitResponse(streamID: id, status: 200, source: download)
        upload.chunks = [ByteBuffer(string: "snapshot bytes")]
        upload.ended = true
        client.resume(streamID: id)
        download.chunks = [ByteBuffer(string: "restore bytes")]
        download.ended = true
        server.resume(streamID: id)
        let events = try Self.exchange(client, server)
        serverEvents = events.server
        let serverData = serverEvents.compactMap { event -> String? in
            if case .data(_, let bytes) = event { return String(buffer: bytes) }
            return nil
        }.joined()
        let clientData = events.client.compactMap { event -> String? in
            if case .data(_, let bytes) = event { return String(buffer: bytes) }
            return nil
        }.joined()
        #expect(serverData == "snapshot bytes")
        #expect(clientData == "restore bytes")
        #expect(events.client.contains { if case .response(id, 200) = $0 { return true }; return false })
        #expect(events.client.contains { if case .closed(id, 0) = $0 { return true }; return false })
        #expect(serverEvents.contains { if case .closed(id, 0) = $0 { return true }; return false })
    }

    @Test("A reset reaches the other side with its error code")
    func resetCarriesCode() throws {
        let (client, server) = try Self.sessions()
        // The sessions only borrow their sources: the owner keeps them alive.
        let upload = Queue(), download = Queue()
        let id = try client.submitConnect(authority: "storage", source: upload)
        _ = try Self.exchange(client, server)
        server.submitResponse(streamID: id, status: 200, source: download)
        _ = try Self.exchange(client, server)
        client.reset(streamID: id, errorCode: 8) // CANCEL
        let events = try Self.exchange(client, server)
        #expect(events.server.contains { if case .closed(id, 8) = $0 { return true }; return false })
        withExtendedLifetime((upload, download)) {}
    }

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    static let emptySettings: [UInt8] = [0, 0, 0, 4, 0, 0, 0, 0, 0]

    @Test("Bytes that are not HTTP/2 end the session (an error, or a GOAWAY after which it is done), never a crash", arguments: [
        Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8),
        [UInt8](repeating: 0xff, count: 64),
        // DATA on stream 0.
        preface + emptySettings + [0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41],
        // A SETTINGS frame whose length is not a multiple of 6.
        preface + [0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5],
        // HEADERS with a header block that is not HPACK.
        preface + emptySettings + [0, 0, 4, 1, 5, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
    ])
    func garbageIsRefused(_ input: [UInt8]) throws {
        let server = try NGHTTP2Session(role: .server, settings: Self.settings, allocator: ByteBufferAllocator())
        let refused = (try? server.receive(ByteBuffer(bytes: input))) == nil
        let reply = try? server.sendJoined(limit: 1 << 20)
        #expect(refused || (reply != nil && !server.isAlive), "the session must end on \(input)")
    }

    @Test("The server announces its stream limit; the client learns it")
    func streamLimit() throws {
        let (client, server) = try Self.sessions()
        _ = try Self.exchange(client, server)
        #expect(client.remoteMaxConcurrentStreams == 10)
    }

    /// DATA payload lengths in serialized frames (the client preface skipped).
    static func dataFrameLengths(_ bytes: ByteBuffer) -> [Int] {
        var bytes = bytes, lengths: [Int] = []
        if bytes.readableBytesView.starts(with: Array("PRI * HTTP/2.0".utf8)) { bytes.moveReaderIndex(forwardBy: 24) }
        while bytes.readableBytes >= 9 {
            let length = Int(bytes.readInteger(as: UInt8.self)!) << 16 | Int(bytes.readInteger(as: UInt16.self)!)
            let type = bytes.readInteger(as: UInt8.self)!
            bytes.moveReaderIndex(forwardBy: 5)
            if type == 0 { lengths.append(length) }
            bytes.moveReaderIndex(forwardBy: min(length, bytes.readableBytes))
        }
        return lengths
    }

    @Test("Between two of our sessions DATA frames carry up to 64 KiB (both advertise it); toward a default peer, 16 KiB")
    func largeDataFrames() throws {
        let roomy = NGHTTP2Session.Settings(maxConcurrentStreams: 10, streamWindow: 1 << 20, connectionWindow: 1 << 22)
        let client = try NGHTTP2Session(role: .client, settings: roomy, allocator: ByteBufferAllocator())
        let server = try NGHTTP2Session(role: .server, settings: roomy, allocator: ByteBufferAllocator())
        _ = try Self.exchange(client, server)
        let upload = Queue()
        upload.chunks = [ByteBuffer(repeating: 7, count: 300_000)]
        _ = try client.submitConnect(authority: "storage", source: upload)
        let sent = try #require(try client.sendJoined(limit: 1 << 20))
        let lengths = Self.dataFrameLengths(sent)
        #expect(lengths.reduce(0, +) == 300_000)
        #expect(lengths.max() == NGHTTP2Session.maxDataFrame)
        try server.receive(sent)
        #expect(server.takeEvents().contains { if case .data = $0 { return true } else { return false } })

        // A peer that never raised SETTINGS_MAX_FRAME_SIZE (a bare nghttp2 or any other
        // HTTP/2 stack) gets frames of the default size. Its settings are only ours minus that
        // one entry, so emulate it: our client, before it has seen any SETTINGS from the server.
        let fresh = try NGHTTP2Session(role: .client, settings: roomy, allocator: ByteBufferAllocator())
        let early = Queue()
        early.chunks = [ByteBuffer(repeating: 9, count: 50_000)]
        _ = try fresh.submitConnect(authority: "storage", source: early)
        let defaultSized = Self.dataFrameLengths(try #require(try fresh.sendJoined(limit: 1 << 20)))
        #expect(!defaultSized.isEmpty && defaultSized.allSatisfy { $0 <= 16_384 })
    }
}
