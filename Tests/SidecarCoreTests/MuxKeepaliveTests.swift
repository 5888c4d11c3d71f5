import NIOCore
import NIOEmbedded
import Testing
import TestFixtures
@testable import SidecarMux

/// The mux connection's keepalive, on virtual time: a client MuxConnectionHandler on an
/// EmbeddedChannel, its peer a bare nghttp2 server session that answers only when we let it.
@Suite("Mux keepalive")
struct MuxKeepaliveTests {
    static let interval = TimeAmount.seconds(30)

    final class Harness {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let handler: MuxConnectionHandler
        let peer: NGHTTP2Session
        var silence: Double?

        init() throws {
            handler = MuxConnectionHandler(role: .client, settings: MuxSettings(keepaliveInterval: MuxKeepaliveTests.interval))
            channel = EmbeddedChannel(loop: loop)
            peer = try NGHTTP2Session(role: .server, settings: MuxSessionTests.settings, allocator: ByteBufferAllocator())
            handler.onUnresponsivePeer = { [unowned self] in self.silence = $0 }
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        /// How many keepalive PINGs (not ACKs, and not the window tuning's, which carry a
        /// non-zero tag) the client wrote since the last call; `deliver`: the peer gets those bytes.
        func clientPings(deliver: Bool) throws -> Int {
            var pings = 0
            while var bytes = try channel.readOutbound(as: ByteBuffer.self) {
                if deliver { try peer.receive(bytes) }
                if bytes.readableBytesView.starts(with: Array("PRI * HTTP/2.0".utf8)) { bytes.moveReaderIndex(forwardBy: 24) }
                while bytes.readableBytes >= 9 {
                    let length = Int(bytes.readInteger(as: UInt8.self)!) << 16 | Int(bytes.readInteger(as: UInt16.self)!)
                    let type = bytes.readInteger(as: UInt8.self)!, flags = bytes.readInteger(as: UInt8.self)!
                    bytes.moveReaderIndex(forwardBy: 4)
                    if type == 6 && flags & 1 == 0 && bytes.getInteger(at: bytes.readerIndex, as: UInt64.self) == 0 { pings += 1 }
                    bytes.moveReaderIndex(forwardBy: length)
                }
            }
            return pings
        }

        /// The peer's answer (SETTINGS, PING ACK, ...) reaches the client.
        func peerAnswers() throws {
            if let bytes = try peer.sendJoined(limit: 1 << 20) { try channel.writeInbound(bytes) }
        }
    }

    @Test("A silent connection is pinged; a peer that answers keeps it, one that stays silent gets it closed")
    func pingsAndClosesSilentPeer() throws {
        let harness = try Harness()
        _ = try harness.clientPings(deliver: true)
        try harness.peerAnswers()

        // Nothing received for an interval: a PING goes out; its ACK keeps the connection.
        harness.loop.advanceTime(by: Self.interval)
        #expect(try harness.clientPings(deliver: true) == 1)
        try harness.peerAnswers()
        harness.loop.advanceTime(by: Self.interval)
        #expect(harness.channel.isActive)
        #expect(harness.silence == nil)

        // Input within each interval (here the ACKs) means the peer is there: still open after
        // several more intervals, pinging whenever the line went quiet.
        var pinged = 0
        for _ in 0..<4 {
            harness.loop.advanceTime(by: Self.interval)
            pinged += try harness.clientPings(deliver: true)
            try harness.peerAnswers()
        }
        #expect(harness.channel.isActive)
        #expect(pinged == 2, "a PING every other interval: the one after an ACK finds the line quiet again")

        // The peer goes silent: the next PING goes unanswered, and a whole interval after it the
        // connection is closed as dead.
        var unanswered = 0
        for _ in 0..<2 where unanswered == 0 {
            harness.loop.advanceTime(by: Self.interval)
            unanswered = try harness.clientPings(deliver: false)
        }
        #expect(unanswered == 1)
        #expect(harness.channel.isActive, "closed before its PING had a whole interval to be answered")
        harness.loop.advanceTime(by: Self.interval)
        #expect(!harness.channel.isActive)
        let silence = try #require(harness.silence)
        #expect(silence >= 60)
    }

    @Test("Traffic keeps the line alive: no PING while input keeps arriving")
    func noPingWhileBusy() throws {
        let harness = try Harness()
        _ = try harness.clientPings(deliver: true)
        try harness.peerAnswers()
        for _ in 0..<6 {
            harness.loop.advanceTime(by: .seconds(20))
            // Any frame from the peer counts as input; its own PING here.
            harness.peer.ping()
            try harness.peerAnswers()
            #expect(try harness.clientPings(deliver: true) == 0)
        }
        #expect(harness.channel.isActive)
        #expect(harness.silence == nil)
    }
}
