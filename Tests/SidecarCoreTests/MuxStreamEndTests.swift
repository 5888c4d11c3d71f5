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
        func canSend(_ count: Int) -> Bool { true }
        func takeOutbound(_ count: Int, endsStream: Bool, into frames: inout OutboundFrames) {
            var payload = ByteBuffer(bytes: pending.prefix(count))
            frames.append(payload: &payload)
            pending.removeFirst(count)
        }
    }

    /// A client stream whose peer (a bare nghttp2 server) sends "partial" and then, with or
    /// without END_STREAM first, RST_STREAM(NO_ERROR).
    static func ending(withEndOfStream: Bool) throws -> [String] {
        let harness = try MuxFlushTests.Harness()
        let body = Body("partial", ends: withEndOfStream) // nghttp2 holds it unretained
        let (stream, streamID) = try harness.openAnsweredStream(answeringWith: body)
        let recorder = Recorder()
        try stream.pipeline.syncOperations.addHandler(recorder)
        stream.read()
        harness.loop.run()
        harness.peer.reset(streamID: streamID, errorCode: 0)
        try harness.peerToClient()
        stream.read()
        harness.loop.run()
        return withExtendedLifetime(body) { recorder.events }
    }

    /// A client mux stream on an embedded connection whose peer answered 200 with `reply`,
    /// then END_STREAM; nothing has read it yet.
    struct AnsweredStream {
        let harness: MuxFlushTests.Harness
        let body: Body // nghttp2 holds it unretained
        let stream: Channel
        var loop: EmbeddedEventLoop { harness.loop }

        init(reply: String) throws {
            harness = try MuxFlushTests.Harness()
            body = Body(reply, ends: true)
            stream = try harness.openAnsweredStream(answeringWith: body).stream
        }

        /// Everything the client wrote reaches the peer (our END_STREAM among it).
        func clientToPeer() throws { _ = try harness.eventsAtPeer() }
    }

    /// The answered stream left unread (the glue withholds reads while the local app is slow):
    /// `inbound` holds the data and the EOF. `then` acts on it, as the glue would; afterwards
    /// the stream is read and the loop runs.
    static func unreadEnd(then act: (Channel) -> Void) throws -> [String] {
        let setup = try AnsweredStream(reply: "tail")
        let recorder = Recorder()
        try setup.stream.pipeline.syncOperations.addHandler(recorder)
        setup.loop.run()
        guard recorder.events.isEmpty else { return ["delivered before any read: \(recorder.events)"] }
        act(setup.stream)
        setup.loop.run()
        try setup.clientToPeer()
        setup.stream.read()
        setup.loop.run()
        return withExtendedLifetime(setup) { recorder.events }
    }

    @Test("Our END_STREAM after theirs, their data still unread: the half-close succeeds, the data and EOF still arrive")
    func lateHalfCloseKeepsUnreadInput() throws {
        var fellBack = false
        let events = try Self.unreadEnd { stream in
            // What GlueHandler does when the local app half-closes: a failed half-close falls
            // back to a full close, which would drop what is still queued.
            stream.close(mode: .output).whenFailure { _ in
                fellBack = true
                stream.close(promise: nil)
            }
        }
        #expect(!fellBack, "END_STREAM went out: the half-close must not fail")
        #expect(events == ["data:tail", "eof"])
    }

    @Test("A full close that drops unread input reports an error, never a quiet end")
    func fullCloseWithUnreadInputIsAnError() throws {
        let events = try Self.unreadEnd { stream in stream.close(promise: nil) }
        #expect(events == ["error"])
    }

    /// Records what a stream asks of its connection.
    final class OwnerLog: MuxStreamOwner {
        var resets: [UInt32] = []
        func streamHasOutput(_ stream: MuxStreamChannel) {}
        func streamConsumed(_ count: Int, on streamID: Int32) {}
        func streamReset(_ streamID: Int32, errorCode: UInt32) { resets.append(errorCode) }
        func streamRespond(_ stream: MuxStreamChannel, status: Int) {}
        func streamTouchedDuringSend(_ stream: MuxStreamChannel) {}
    }

    @Test("A full close resets only after the frame that really carries END_STREAM, not one prepared before the close")
    func closeResetWaitsForTheRealEndOfStream() throws {
        let parent = EmbeddedChannel()
        let owner = OwnerLog()
        let stream = MuxStreamChannel(parent: parent, owner: owner, autoRead: false)
        stream.register()
        stream.assign(streamID: 1)
        stream.activate()
        stream.writeAndFlush(ByteBuffer(string: "0123456789"), promise: nil)
        // nghttp2 has framed those 10 bytes without END_STREAM (the output was open) but holds
        // the frame (the send chunk was full); then the stream is closed.
        stream.close(promise: nil)
        var frames = OutboundFrames(allocator: ByteBufferAllocator())
        stream.takeOutbound(10, endsStream: false, into: &frames)
        stream.afterSend()
        #expect(owner.resets.isEmpty, "RST_STREAM(NO_ERROR) before END_STREAM: the peer would see an abort")
        #expect(stream.outboundState == (0, true), "END_STREAM is still owed")
        stream.takeOutbound(0, endsStream: true, into: &frames)
        stream.afterSend()
        #expect(owner.resets == [0])
        #expect(frames.byteCount == 10)
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
