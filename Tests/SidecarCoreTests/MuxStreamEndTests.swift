import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
import TestFixtures
@testable import SidecarMux

/// How a stream's end reaches the tunnel: only END_STREAM is a clean end of input. A
/// RST_STREAM, even with NO_ERROR, before END_STREAM cuts the data short and must arrive as an
/// error (the glue turns it into an abort), or a truncated upload would look complete.
@Suite("Mux stream endings")
struct MuxStreamEndTests {
    /// What the stream's pipeline saw, in order.
    final class Recorder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var events: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            events.append("data:\(String(buffer: unwrapInboundIn(data)))")
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .some(.inputClosed) = event as? ChannelEvent { events.append("eof") }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { events.append("error") }
    }

    /// The server's response body: `payload`, then the end of the stream or not.
    final class Body: MuxOutboundSource {
        var pending: [UInt8]
        let ends: Bool
        init(_ text: String, ends: Bool) { pending = Array(text.utf8); self.ends = ends }
        var outboundState: (queued: Int, ended: Bool) { (pending.count, ends) }
        func takeOutbound(_ count: Int, into frames: inout OutboundFrames) {
            var payload = ByteBuffer(bytes: pending.prefix(count))
            frames.append(payload: &payload)
            pending.removeFirst(count)
        }
    }

    /// A client stream whose peer (a bare nghttp2 server) sends "partial" and then, with or
    /// without END_STREAM first, RST_STREAM(NO_ERROR).
    static func ending(withEndOfStream: Bool) throws -> [String] {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let handler = MuxConnectionHandler(role: .client, settings: MuxSettings(keepaliveInterval: .seconds(30)))
        let peer = try NGHTTP2Session(role: .server, settings: MuxSessionTests.settings, allocator: ByteBufferAllocator())
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        func clientToPeer() throws { while let bytes = try channel.readOutbound(as: ByteBuffer.self) { try peer.receive(bytes) } }
        func peerToClient() throws { while let bytes = try peer.sendJoined(limit: 1 << 20) { try channel.writeInbound(bytes) } }

        let opened = handler.openStream(authority: "storage")
        try clientToPeer()
        guard case .request(let streamID, _)? = peer.takeEvents().first(where: { if case .request = $0 { true } else { false } }) else {
            throw MuxError.streamRefused("no CONNECT reached the peer")
        }
        let body = Body("partial", ends: withEndOfStream)
        peer.submitResponse(streamID: streamID, status: 200, source: body)
        try peerToClient()
        let stream = try opened.wait()
        let recorder = Recorder()
        try stream.pipeline.syncOperations.addHandler(recorder)
        stream.read()
        loop.run()
        peer.reset(streamID: streamID, errorCode: 0)
        try peerToClient()
        stream.read()
        loop.run()
        return recorder.events
    }

    @Test("END_STREAM then RST_STREAM(NO_ERROR): the data, then a clean end")
    func endThenReset() throws {
        #expect(try Self.ending(withEndOfStream: true) == ["data:partial", "eof"])
    }

    @Test("RST_STREAM(NO_ERROR) without END_STREAM: the data, then an error, never a clean end")
    func resetWithoutEnd() throws {
        let events = try Self.ending(withEndOfStream: false)
        #expect(events.first == "data:partial")
        #expect(events.contains("error") && !events.contains("eof"), "\(events)")
    }
}
