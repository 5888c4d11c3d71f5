import NIOCore
import NIOEmbedded
import Testing
import TestFixtures
@testable import SidecarTLS
@testable import SidecarModel

/// The TLS handler's state machine, driven byte by byte between two EmbeddedChannels (no
/// sockets, virtual time), so every transition is observable.
@Suite("TLS handler")
struct TLSHandlerTests {
    /// Records what reaches the handler after TLS.
    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var received = ByteBuffer()
        var peer: TLSPeer?
        var inputClosed = false
        var errors: [Error] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received.writeBuffer(&buffer)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let tls = event as? TLSEvent, case .handshakeCompleted(let peer) = tls { self.peer = peer }
            if let channelEvent = event as? ChannelEvent, channelEvent == .inputClosed { inputClosed = true }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) { errors.append(error) }
    }

    /// EmbeddedChannel turns every close into a full close; this plays the socket's
    /// shutdown(SHUT_WR) instead, so half-close can be observed.
    final class SocketHalfClose: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var writeShutdown = false
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            guard mode == .output else { return context.close(mode: mode, promise: promise) }
            writeShutdown = true
            promise?.succeed()
        }
    }

    struct Pair {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientRecorder = Recorder()
        let serverRecorder = Recorder()
        let clientSocket = SocketHalfClose()
        let serverSocket = SocketHalfClose()
        /// Every ciphertext buffer the client wrote, in order.
        var clientCiphertext: [ByteBuffer] = []

        init(expected: SPIFFEID? = nil) throws {
            let trustDomain = TestCertificates.trustDomain
            let clientContext = try TLSContext(role: .client, credentials: TestCertificates.credentials("backup-agent"))
            let serverContext = try TLSContext(role: .server, credentials: TestCertificates.credentials("storage"))
            let expectedPeer = expected ?? SPIFFEID(trustDomain: trustDomain, datacenter: "dc1", service: "storage")
            client = EmbeddedChannel()
            server = EmbeddedChannel()
            try client.pipeline.syncOperations.addHandlers(clientSocket, TLSHandler(context: clientContext, expectedPeer: expectedPeer), clientRecorder)
            try server.pipeline.syncOperations.addHandlers(serverSocket, TLSHandler(context: serverContext), serverRecorder)
        }

        func activate() throws {
            try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        }

        /// Moves ciphertext both ways until neither side has anything to send.
        mutating func pump() throws {
            var moved = true
            while moved {
                moved = false
                while let bytes = try client.readOutbound(as: ByteBuffer.self) {
                    clientCiphertext.append(bytes)
                    try server.writeInbound(bytes)
                    moved = true
                }
                while let bytes = try server.readOutbound(as: ByteBuffer.self) {
                    try client.writeInbound(bytes)
                    moved = true
                }
            }
        }
    }

    /// Lengths of the TLS records in `buffers` (5-byte header: type, version, length).
    static func recordLengths(_ buffers: [ByteBuffer]) -> [(type: UInt8, length: Int)] {
        var all = ByteBuffer()
        for var buffer in buffers { all.writeBuffer(&buffer) }
        var records: [(UInt8, Int)] = []
        while all.readableBytes >= 5, let type = all.readInteger(as: UInt8.self),
              all.readInteger(as: UInt16.self) != nil, let length = all.readInteger(as: UInt16.self) {
            records.append((type, Int(length)))
            all.moveReaderIndex(forwardBy: min(Int(length), all.readableBytes))
        }
        return records
    }

    @Test("Handshake verifies both identities; data written before it completes is delivered after")
    func handshakeAndEarlyWrites() throws {
        var pair = try Pair()
        try pair.activate()
        pair.client.write(ByteBuffer(string: "early"), promise: nil)
        pair.client.flush()
        try pair.pump()
        #expect(pair.clientRecorder.peer?.identity.service == "storage")
        #expect(pair.serverRecorder.peer?.identity.service == "backup-agent")
        #expect(pair.serverRecorder.peer?.protocolVersion == "TLSv1.3")
        #expect(String(buffer: pair.serverRecorder.received) == "early")
    }

    @Test("Small writes in one flush are coalesced into one record; bulk data goes out in full 16 KB records")
    func recordSizing() throws {
        var pair = try Pair()
        try pair.activate()
        try pair.pump()
        pair.clientCiphertext.removeAll()
        for index in 0..<64 { pair.client.write(ByteBuffer(repeating: UInt8(index), count: 256), promise: nil) }
        pair.client.flush()
        try pair.pump()
        let small = Self.recordLengths(pair.clientCiphertext).filter { $0.type == 23 }
        #expect(small.count == 1, "64 x 256 bytes should leave as one record, got \(small.count)")
        #expect(pair.serverRecorder.received.readableBytes == 64 * 256)

        pair.clientCiphertext.removeAll()
        pair.client.writeAndFlush(ByteBuffer(repeating: 7, count: 1 << 20), promise: nil)
        try pair.pump()
        let bulk = Self.recordLengths(pair.clientCiphertext).filter { $0.type == 23 }
        // TLS 1.3 record: 16384 plaintext + 1 content-type byte + 16-byte AEAD tag.
        #expect(bulk.count == 64)
        #expect(bulk.allSatisfy { $0.length == 16384 + 17 })
        #expect(pair.serverRecorder.received.readableBytes == 64 * 256 + (1 << 20))
    }

    /// A peer that reads nothing keeps every flush's ciphertext queued at the socket; the
    /// watermark counts its bytes, so each buffer must be about the size of what it holds.
    @Test("One write's ciphertext is a buffer of about its size, never regrown, whatever the write",
          arguments: [1, 200, 5000, 64 * 1024, 256 * 1024])
    func ciphertextSizedToTheWrite(count: Int) throws {
        var pair = try Pair()
        try pair.activate()
        try pair.pump()
        pair.clientCiphertext.removeAll()
        pair.client.writeAndFlush(ByteBuffer(repeating: 9, count: count), promise: nil)
        try pair.pump()
        #expect(pair.clientCiphertext.count == 1)
        let ciphertext = try #require(pair.clientCiphertext.first)
        let records = (count + 16383) / 16384
        #expect(ciphertext.readableBytes == count + records * 22)
        // NIO rounds a buffer's capacity up to a power of two.
        let bound = count + records * 96
        #expect(ciphertext.storageCapacity < 2 * bound, "\(ciphertext.storageCapacity) bytes for \(ciphertext.readableBytes)")
        #expect(pair.serverRecorder.received.readableBytes == count)
    }

    @Test("Frame headers and payload slices written separately leave in order, in full records")
    func separateHeadersAndPayloads() throws {
        var pair = try Pair()
        try pair.activate()
        try pair.pump()
        pair.clientCiphertext.removeAll()
        var expected: [UInt8] = []
        for frame in 0..<8 {
            let header = ByteBuffer(bytes: [UInt8](repeating: UInt8(frame), count: 9))
            let payload = ByteBuffer(bytes: (0..<(64 * 1024 + frame * 1000)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ frame) })
            expected += Array(header.readableBytesView) + Array(payload.readableBytesView)
            pair.client.write(header, promise: nil)
            pair.client.write(payload, promise: nil)
        }
        pair.client.flush()
        try pair.pump()
        #expect(Array(pair.serverRecorder.received.readableBytesView) == expected)
        let records = Self.recordLengths(pair.clientCiphertext).filter { $0.type == 23 }
        #expect(records.dropLast().allSatisfy { $0.length == 16384 + 17 }, "\(records.map(\.length))")
        #expect(records.count == (expected.count + 16383) / 16384)
    }

    @Test("Half-close both ways: close_notify ends one direction, the other keeps flowing")
    func halfClose() throws {
        var pair = try Pair()
        try pair.activate()
        try pair.pump()
        pair.client.writeAndFlush(ByteBuffer(string: "request"), promise: nil)
        pair.client.close(mode: .output, promise: nil)
        try pair.pump()
        #expect(pair.clientSocket.writeShutdown, "TCP write side shut after close_notify")
        #expect(pair.client.isActive)
        #expect(pair.serverRecorder.inputClosed)
        #expect(String(buffer: pair.serverRecorder.received) == "request")

        // Writing after our own close_notify fails; the peer can still answer.
        let late = pair.client.writeAndFlush(ByteBuffer(string: "too late"))
        #expect(throws: (any Error).self) { try late.wait() }
        pair.server.writeAndFlush(ByteBuffer(string: "reply after the client's EOF"), promise: nil)
        try pair.pump()
        #expect(String(buffer: pair.clientRecorder.received) == "reply after the client's EOF")
        #expect(!pair.clientRecorder.inputClosed)

        pair.server.close(mode: .output, promise: nil)
        try pair.pump()
        #expect(pair.clientRecorder.inputClosed)
        #expect(pair.clientRecorder.errors.isEmpty)
        #expect(pair.serverRecorder.errors.isEmpty)
        // Both directions done: the server side closes completely.
        #expect(!pair.server.isActive || pair.serverSocket.writeShutdown)
    }

    @Test("Closing our output after the peer's close_notify still sends what was written but not flushed")
    func unflushedWritesPrecedeLateCloseNotify() throws {
        var pair = try Pair()
        try pair.activate()
        try pair.pump()
        pair.server.close(mode: .output, promise: nil)
        try pair.pump()
        #expect(pair.clientRecorder.inputClosed)
        pair.client.write(ByteBuffer(string: "last frames"), promise: nil)
        let closed = pair.client.close(mode: .output)
        try pair.pump()
        try closed.wait()
        #expect(String(buffer: pair.serverRecorder.received) == "last frames")
        #expect(pair.serverRecorder.inputClosed)
        #expect(pair.serverRecorder.errors.isEmpty)
    }

    @Test("TCP EOF without close_notify is reported as a truncation, not a clean end")
    func uncleanShutdown() throws {
        var pair = try Pair()
        try pair.activate()
        try pair.pump()
        pair.client.writeAndFlush(ByteBuffer(string: "partial snapshot"), promise: nil)
        try pair.pump()
        pair.server.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(pair.serverRecorder.errors.contains { ($0 as? TLSError) == .uncleanShutdown })
        #expect(!pair.serverRecorder.inputClosed, "a truncated stream must not look like a clean EOF")
    }

    @Test("A peer that never completes the handshake is cut at the handshake timeout")
    func handshakeTimeout() throws {
        let server = EmbeddedChannel()
        let recorder = Recorder()
        let context = try TLSContext(role: .server, credentials: TestCertificates.credentials("storage"))
        try server.pipeline.syncOperations.addHandlers(
            TLSHandler(context: context, configuration: TLSHandlerConfiguration(handshakeTimeout: .seconds(10))), recorder)
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        server.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(server.isActive)
        server.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(recorder.errors.contains { ($0 as? TLSError) == .handshakeTimeout })
        #expect(!server.isActive)
    }

    @Test("Garbage instead of a ClientHello fails the handshake and closes")
    func garbage() throws {
        let server = EmbeddedChannel()
        let recorder = Recorder()
        let context = try TLSContext(role: .server, credentials: TestCertificates.credentials("storage"))
        try server.pipeline.syncOperations.addHandlers(TLSHandler(context: context), recorder)
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try server.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: storage\r\n\r\n"))
        #expect(recorder.errors.contains { if case .handshakeFailed = $0 as? TLSError { return true }; return false })
        #expect(recorder.received.readableBytes == 0)
        #expect(!server.isActive)
    }

    @Test("The client refuses a server that is not the expected destination")
    func unexpectedServer() throws {
        var pair = try Pair(expected: SPIFFEID(trustDomain: TestCertificates.trustDomain, datacenter: "dc1", service: "billing"))
        try pair.activate()
        try pair.pump()
        #expect(pair.clientRecorder.peer == nil)
        #expect(pair.clientRecorder.errors.contains {
            if case .peerRejected(.unexpectedIdentity) = $0 as? TLSError { return true }
            return false
        })
    }
}
