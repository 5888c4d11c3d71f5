import FoundationEssentials
import SidecarModel
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarTLS

/// Where an HTTP server listens.
enum HTTPEndpoint: Sendable {
    case tcp(host: String, port: Int)
    case unix(path: String)
}

/// One HTTP/1.1 request and its whole answer, over a connection of its own (`Connection:
/// close`). The Consul agent is local and its blocking queries hold a connection for minutes,
/// so a pool would save nothing worth its stale-connection races. TLS is our OpenSSL layer.
struct HTTPExchange {
    struct Reply {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    var endpoint: HTTPEndpoint
    /// HTTPS: the context and the name the server's certificate must carry.
    var tls: (context: HTTPSClientContext, serverName: String)?
    var connectTimeout: TimeAmount = .seconds(5)
    var maxBodyBytes = 16 << 20

    func perform(_ method: HTTPMethod, target: String, headers: HTTPHeaders, body: [UInt8]?,
                 timeout: TimeAmount, on group: any EventLoopGroup) async throws -> Reply {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Reply.self)
        let collector = ReplyCollector(promise: promise, maxBodyBytes: maxBodyBytes)
        let tls = self.tls
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handlers = channel.pipeline.syncOperations
                    if let tls {
                        try handlers.addHandler(TLSHandler(httpsClient: tls.context, serverName: tls.serverName))
                    }
                    try handlers.addHandler(HTTPRequestEncoder())
                    try handlers.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)))
                    try handlers.addHandler(collector)
                }
            }
        let channel: any Channel
        do {
            switch endpoint {
            case .tcp(let host, let port): channel = try await bootstrap.connect(host: host, port: port).get()
            case .unix(let path): channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            }
        } catch {
            let failure = Failure("cannot connect to \(describe(endpoint)): \(error)")
            promise.fail(failure) // No channel to complete it; an earlier completion stays.
            throw failure
        }
        let deadline = eventLoop.scheduleTask(in: timeout) {
            channel.pipeline.fireErrorCaught(Failure("no complete answer within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: headers)
        head.headers.replaceOrAdd(name: "Host", value: hostHeader)
        head.headers.replaceOrAdd(name: "Connection", value: "close")
        head.headers.replaceOrAdd(name: "Content-Length", value: "\(body?.count ?? 0)")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body, !body.isEmpty {
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        // A cancelled caller (a watch being stopped) must not wait out a five-minute blocking query.
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            channel.pipeline.fireErrorCaught(CancellationError())
        }
    }

    private var hostHeader: String {
        switch endpoint {
        case .tcp(let host, let port): return "\(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .unix: return "localhost"
        }
    }

    private func describe(_ endpoint: HTTPEndpoint) -> String {
        switch endpoint {
        case .tcp: return hostHeader
        case .unix(let path): return "unix://\(path)"
        }
    }
}

/// Gathers one response; anything that ends the connection first fails the exchange.
/// `@unchecked Sendable`: a channel handler, used only on its channel's event loop.
private final class ReplyCollector: ChannelInboundHandler, @unchecked Sendable {
    // Confined to the channel's event loop (the only place its methods run).
    typealias InboundIn = HTTPClientResponsePart

    enum State {
        case awaitingHead
        case body(HTTPResponseHead, ByteBuffer)
        case done
    }

    private var state = State.awaitingHead
    private let promise: EventLoopPromise<HTTPExchange.Reply>
    private let maxBodyBytes: Int

    init(promise: EventLoopPromise<HTTPExchange.Reply>, maxBodyBytes: Int) {
        self.promise = promise
        self.maxBodyBytes = maxBodyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .awaitingHead):
            state = .body(head, context.channel.allocator.buffer(capacity: 0))
        case (.body(var chunk), .body(let head, var body)):
            guard body.readableBytes + chunk.readableBytes <= maxBodyBytes else {
                finish(.failure(HTTPExchange.Failure("answer body larger than \(maxBodyBytes) bytes")), context: context)
                return
            }
            body.writeBuffer(&chunk)
            state = .body(head, body)
        case (.end, .body(let head, let body)):
            finish(.success(.init(status: Int(head.status.code), headers: head.headers, body: body)), context: context)
        case (_, .done):
            break
        default:
            finish(.failure(HTTPExchange.Failure("malformed HTTP answer")), context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // After a complete answer, the server closing without TLS close_notify changes nothing.
        finish(.failure(HTTPExchange.Failure("\(error)")), context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(HTTPExchange.Failure("connection closed before the answer was complete")), context: context)
        context.fireChannelInactive()
    }

    private func finish(_ result: Result<HTTPExchange.Reply, any Error>, context: ChannelHandlerContext) {
        if case .done = state { return }
        state = .done
        promise.completeWith(result)
        context.close(promise: nil)
    }
}
