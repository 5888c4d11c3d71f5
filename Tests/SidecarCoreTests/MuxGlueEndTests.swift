import NIOCore
import NIOEmbedded
import Testing
@testable import SidecarCore
@testable import SidecarMux
import SidecarTLS

/// A mux stream joined by the glue to a local channel whose app is slow, as in a tunnel: how
/// the far side's last data and end reach the local app when the stream's end races them.
@Suite("Mux stream ends through the glue")
struct MuxGlueEndTests {
    /// What the glue did to the local channel, in order: its writes, output shutdown, abort.
    final class LocalSide: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        var events: [String] = []
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            let bytes = unwrapOutboundIn(data)
            if bytes.readableBytes > 0 { events.append("data:\(String(buffer: bytes))") }
            promise?.succeed()
        }
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            if mode == .output {
                // The glue ends the output on EOF and again when the stream closes; a socket
                // takes the second as a no-op.
                if events.last != "end" { events.append("end") }
                promise?.succeed()
            } else {
                context.close(mode: mode, promise: promise)
            }
        }
        func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
            if event is TLSAbortRequest { events.append("abort") }
            promise?.succeed()
        }
    }

    /// The answered stream ("tail", then END_STREAM) joined to a local channel that cannot take
    /// writes yet, so the glue holds the stream's read; then the local app half-closes.
    struct Tunnel {
        let setup: MuxStreamEndTests.AnsweredStream
        let local: EmbeddedChannel
        let localSide = LocalSide()

        init() throws {
            setup = try MuxStreamEndTests.AnsweredStream(reply: "tail")
            local = EmbeddedChannel(loop: setup.loop)
            try local.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
            let glue = GlueHandler<ByteBuffer, ByteBuffer>.pair(stats: ConnectionStats(meter: nil), meshPayload: \.readableBytes,
                                                                localPayload: \.readableBytes)
            try local.pipeline.syncOperations.addHandler(localSide)
            try local.pipeline.syncOperations.addHandler(glue.local)
            try setup.stream.pipeline.syncOperations.addHandler(glue.mesh)
            local.isWritable = false
            setup.stream.read() // withheld by the glue: the local side is not writable
            setup.loop.run()
            // The local app shuts down its write side: the glue ends the stream's output.
            local.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            setup.loop.run()
            try setup.clientToPeer()
        }

        /// The local app reads again.
        func localWritable() {
            local.isWritable = true
            local.pipeline.fireChannelWritabilityChanged()
            setup.loop.run()
        }
    }

    @Test("The local app half-closes while the far side's last data waits for it: it still gets the data, then a clean end")
    func halfCloseBeforeTheLastRead() throws {
        let tunnel = try Tunnel()
        #expect(tunnel.localSide.events.isEmpty, "\(tunnel.localSide.events)")
        tunnel.localWritable()
        #expect(tunnel.localSide.events == ["data:tail", "end"])
    }

    @Test("A full close that drops the far side's unread data aborts the local side, never ends it cleanly")
    func fullCloseWithUnreadDataAborts() throws {
        let tunnel = try Tunnel()
        // Our output already ended (the glue is past its graceful point), as when an idle
        // timeout or a failed half-close closes the stream with the data still queued.
        tunnel.setup.stream.close(promise: nil)
        tunnel.setup.loop.run()
        #expect(tunnel.localSide.events.contains("abort"), "\(tunnel.localSide.events)")
        #expect(!tunnel.localSide.events.contains("end"), "a truncated stream must not reach the app as a clean end")
    }
}
