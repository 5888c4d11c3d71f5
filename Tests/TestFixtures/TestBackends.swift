import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOHTTP1
import NIOHTTP2
@testable import SidecarTLS

/// A plaintext "local service" on 127.0.0.1:0 with a pluggable behaviour. Counts what reaches it,
/// so tests can prove that a refused peer delivered nothing.
package final class TestBackend: Sendable {
    package enum Behaviour: Sendable {
        /// Echo every byte; half-close the reply when the client half-closes.
        case echo
        /// Read until EOF, then reply with the sha256 hex of what was read, `replyBytes` random
        /// bytes, and close. The reply is only sent after the client shut its write side.
        case replyAfterEOF(replyBytes: Int)
        /// Minimal HTTP/1.1: answer each request with "200 backup-sidecar-ok".
        case http
        /// Reads `bytesPerTick` every `tick` and discards them.
        case slowSink(bytesPerTick: Int, tick: TimeAmount)
        /// Streams `bytes` random bytes to each client as fast as it can take them (a restore).
        case source(bytes: Int)
        /// Like `source`, then resets the connection instead of closing it (a crashed server).
        case abortAfter(bytes: Int)
        /// Expects a PROXY v2 header, answers "src=<ip:port> spiffe=<id> tls=<version>\n", then echoes.
        case proxyProtocolEcho
        /// A backup repository over HTTP/1.1 (NIOHTTP1): answers every request 200 with
        /// "METHOD path bytes sha256" of the body it received, and logs what reached it.
        case repository
        /// The same repository over cleartext HTTP/2 with prior knowledge (NIOHTTP2, an HTTP/2
        /// implementation independent of the sidecar's nghttp2), one stream per request.
        case repositoryHTTP2
    }

    package let channel: Channel
    private let connectionsBox = NIOLockedValueBox(0)
    private let closedBox = NIOLockedValueBox(0)
    private let bytesBox = NIOLockedValueBox(0)
    private let replyDigests = NIOLockedValueBox<[String]>([])
    private let requestLog = NIOLockedValueBox<[String]>([])
    /// For `.repository`: "METHOD path" of every request that reached the backend.
    package var requests: [String] { requestLog.withLockedValue { $0 } }

    package var port: Int { channel.localAddress?.port ?? 0 }
    /// Connections accepted, in all.
    package var connections: Int { connectionsBox.withLockedValue { $0 } }
    /// Connections that have ended, in all (after their handler saw the end).
    package var closedConnections: Int { closedBox.withLockedValue { $0 } }
    package var bytesReceived: Int { bytesBox.withLockedValue { $0 } }
    /// For `.replyAfterEOF`: sha256 of each reply payload sent.
    package var sentReplyDigests: [String] { replyDigests.withLockedValue { $0 } }

    /// - Parameter unixSocketPath: listen on this unix socket instead of 127.0.0.1:0.
    package init(_ behaviour: Behaviour, group: EventLoopGroup, unixSocketPath: String? = nil) async throws {
        let connections = connectionsBox, closed = closedBox, bytes = bytesBox, digests = replyDigests
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        if case .slowSink(let perTick, _) = behaviour {
            bootstrap = bootstrap
                .childChannelOption(ChannelOptions.autoRead, value: false)
                .childChannelOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: perTick))
                // Keep the kernel's receive buffer small so the slowness shows up as backpressure.
                .childChannelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 64 * 1024)
        }
        let requests = requestLog
        channel = try await bootstrap.childChannelInitializer { channel in
            connections.withLockedValue { $0 += 1 }
            channel.closeFuture.whenComplete { _ in closed.withLockedValue { $0 += 1 } }
            if case .repository = behaviour {
                return channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(RepositoryHandler(requests: requests, bytes: bytes))
                }
            }
            if case .repositoryHTTP2 = behaviour {
                return channel.configureHTTP2Pipeline(mode: .server) { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try stream.pipeline.syncOperations.addHandlers(HTTP2FramePayloadToHTTP1ServerCodec(),
                                                                       RepositoryHandler(requests: requests, bytes: bytes))
                    }
                }.map { _ in }
            }
            return channel.eventLoop.makeCompletedFuture {
                let handler: ChannelHandler
                switch behaviour {
                case .echo: handler = EchoHandler(bytes: bytes)
                case .replyAfterEOF(let replyBytes): handler = ReplyAfterEOFHandler(replyBytes: replyBytes, bytes: bytes, digests: digests)
                case .http: handler = TinyHTTPHandler(bytes: bytes)
                case .slowSink(_, let tick): handler = SlowSinkHandler(tick: tick, bytes: bytes)
                case .source(let total): handler = SourceHandler(total: total)
                case .abortAfter(let total): handler = SourceHandler(total: total, abortAtEnd: true)
                case .repository, .repositoryHTTP2: preconditionFailure("configured above")
                case .proxyProtocolEcho: handler = ProxyProtocolEchoHandler(bytes: bytes)
                }
                try channel.pipeline.syncOperations.addHandler(handler)
            }
        }
        .bind(to: try unixSocketPath.map { try SocketAddress(unixDomainSocketPath: $0) } ?? SocketAddress(ipAddress: "127.0.0.1", port: 0))
        .get()
    }

    package func stop() async { try? await channel.close() }
}

private final class EchoHandler: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer
    package let bytes: NIOLockedValueBox<Int>
    package init(bytes: NIOLockedValueBox<Int>) { self.bytes = bytes }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytes.withLockedValue { $0 += unwrapInboundIn(data).readableBytes }
        context.write(data, promise: nil)
    }

    package func channelReadComplete(context: ChannelHandlerContext) { context.flush() }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { context.closeAfterPendingWrites() }
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

private final class ReplyAfterEOFHandler: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer
    package let replyBytes: Int
    package let bytes: NIOLockedValueBox<Int>
    package let digests: NIOLockedValueBox<[String]>
    package var digest = SHA256Digest()

    package init(replyBytes: Int, bytes: NIOLockedValueBox<Int>, digests: NIOLockedValueBox<[String]>) {
        self.replyBytes = replyBytes
        self.bytes = bytes
        self.digests = digests
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        bytes.withLockedValue { $0 += buffer.readableBytes }
        buffer.withUnsafeReadableBytes { digest.update($0) }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else { return }
        let received = digest.finalizeHex()
        digest = SHA256Digest()
        context.write(wrapOutboundOut(ByteBuffer(string: received)), promise: nil)
        let replyDigest = SHA256Digest()
        var remaining = replyBytes
        while remaining > 0 {
            let chunk = secureRandomBytes(min(remaining, 1 << 20))
            replyDigest.update(chunk)
            context.write(wrapOutboundOut(ByteBuffer(bytes: chunk)), promise: nil)
            remaining -= chunk.count
        }
        let sent = replyDigest.finalizeHex()
        digests.withLockedValue { $0.append(sent) }
        context.closeAfterPendingWrites()
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

private final class TinyHTTPHandler: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer
    package let bytes: NIOLockedValueBox<Int>
    package var pending = ""
    package init(bytes: NIOLockedValueBox<Int>) { self.bytes = bytes }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        bytes.withLockedValue { $0 += buffer.readableBytes }
        pending += String(buffer: buffer)
        while let end = pending.range(of: "\r\n\r\n") {
            let request = pending[..<end.upperBound]
            pending.removeSubrange(..<end.upperBound)
            let body = "backup-sidecar-ok\n"
            // HTTP/1.0 without keep-alive: answer and close, as a real server would.
            let closeAfter = request.hasPrefix("GET / HTTP/1.0") || request.contains("Connection: close")
            let response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            let written = context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response)))
            if closeAfter {
                let channel = context.channel
                written.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

private final class SlowSinkHandler: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer
    package let tick: TimeAmount
    package let bytes: NIOLockedValueBox<Int>
    package var task: RepeatedTask?
    package init(tick: TimeAmount, bytes: NIOLockedValueBox<Int>) {
        self.tick = tick
        self.bytes = bytes
    }

    package func channelActive(context: ChannelHandlerContext) {
        task = context.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in context.read() }
        context.fireChannelActive()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        task?.cancel()
        context.fireChannelInactive()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytes.withLockedValue { $0 += unwrapInboundIn(data).readableBytes }
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

private final class SourceHandler: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer
    package let chunk = ByteBuffer(bytes: secureRandomBytes(1 << 20))
    package var remaining: Int
    package let abortAtEnd: Bool
    package init(total: Int, abortAtEnd: Bool = false) {
        remaining = total
        self.abortAtEnd = abortAtEnd
    }

    package func channelActive(context: ChannelHandlerContext) {
        pump(context: context)
        context.fireChannelActive()
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) { pump(context: context) }

    /// Writes while the channel can take it: backpressure, never a 1 GiB buffer.
    private func pump(context: ChannelHandlerContext) {
        while remaining > 0 && context.channel.isWritable {
            let slice = chunk.getSlice(at: 0, length: min(remaining, chunk.readableBytes))!
            remaining -= slice.readableBytes
            context.write(wrapOutboundOut(slice), promise: nil)
        }
        context.flush()
        if remaining == 0 && abortAtEnd {
            remaining = -1
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
                (channel as? SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
                    channel.close(promise: nil)
                }
            }
        } else if remaining == 0 {
            context.closeAfterPendingWrites()
            remaining = -1
        }
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

private final class RepositoryHandler: ChannelInboundHandler {
    package typealias InboundIn = HTTPServerRequestPart
    package typealias OutboundOut = HTTPServerResponsePart
    package let requests: NIOLockedValueBox<[String]>
    package let bytes: NIOLockedValueBox<Int>
    package var head: HTTPRequestHead?
    package var digest = SHA256Digest()
    package var bodyBytes = 0

    package init(requests: NIOLockedValueBox<[String]>, bytes: NIOLockedValueBox<Int>) {
        self.requests = requests
        self.bytes = bytes
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            digest = SHA256Digest()
            bodyBytes = 0
            requests.withLockedValue { $0.append("\(head.method.rawValue) \(head.uri)") }
        case .body(let body):
            bodyBytes += body.readableBytes
            bytes.withLockedValue { $0 += body.readableBytes }
            body.withUnsafeReadableBytes { digest.update($0) }
        case .end:
            guard let head else { return }
            let text = "\(head.method.rawValue) \(head.uri) \(bodyBytes) \(digest.finalizeHex())\n"
            var headers = HTTPHeaders([("content-length", "\(text.utf8.count)"), ("content-type", "text/plain")])
            if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            if head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil) }
            let keepAlive = head.isKeepAlive && !clientEnded
            let channel = context.channel
            self.head = nil
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { channel.close(promise: nil) }
            }
        }
    }

    /// Like nginx or rclone: a client that ends its side gets the answer in progress, then
    /// the connection closes (a half-closed keep-alive connection would otherwise stay open).
    private var clientEnded = false

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            clientEnded = true
            if head == nil { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// Parses the PROXY v2 header independently of the sidecar's encoder.
private final class ProxyProtocolEchoHandler: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer
    package let bytes: NIOLockedValueBox<Int>
    package var pending = ByteBuffer()
    package var parsed = false
    package init(bytes: NIOLockedValueBox<Int>) { self.bytes = bytes }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        bytes.withLockedValue { $0 += buffer.readableBytes }
        if parsed { context.writeAndFlush(wrapOutboundOut(buffer), promise: nil); return }
        pending.writeBuffer(&buffer)
        guard pending.readableBytes >= 16, let length = pending.getInteger(at: pending.readerIndex + 14, as: UInt16.self),
              pending.readableBytes >= 16 + Int(length) else { return }
        let signature = pending.readBytes(length: 12)!
        let versionCommand = pending.readInteger(as: UInt8.self)!
        let family = pending.readInteger(as: UInt8.self)!
        _ = pending.readInteger(as: UInt16.self)
        var body = pending.readSlice(length: Int(length))!
        var summary = signature == [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A] && versionCommand == 0x21
            ? "" : "bad-signature "
        if family == 0x11 {
            let src = body.readBytes(length: 4)!, _ = body.readBytes(length: 4)!
            let srcPort = body.readInteger(as: UInt16.self)!, _ = body.readInteger(as: UInt16.self)!
            summary += "src=\(src.map(String.init).joined(separator: ".")):\(srcPort)"
        }
        while let type = body.readInteger(as: UInt8.self), let size = body.readInteger(as: UInt16.self),
              var value = body.readSlice(length: Int(size)) {
            if type == 0xE0 { summary += " spiffe=\(value.readString(length: value.readableBytes)!)" }
            if type == 0x20 {
                _ = value.readBytes(length: 5)
                if value.readInteger(as: UInt8.self) == 0x21, let versionLength = value.readInteger(as: UInt16.self) {
                    summary += " tls=\(value.readString(length: Int(versionLength))!)"
                }
            }
        }
        parsed = true
        context.write(wrapOutboundOut(ByteBuffer(string: summary + "\n")), promise: nil)
        if pending.readableBytes > 0 { context.write(wrapOutboundOut(pending), promise: nil) }
        context.flush()
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

extension ChannelHandlerContext {
    /// Closes once everything written so far is on the wire (a plain close drops pending writes).
    package func closeAfterPendingWrites() {
        let channel = self.channel
        writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0))).whenComplete { _ in channel.close(promise: nil) }
    }
}
