import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// An HTTP/1.1 server on 127.0.0.1:0 whose every answer comes from `respond`, so tests can
/// play an agent that misbehaves in exactly one way (truncated JSON, 500, 403, ...).
final class ScriptedHTTPServer: Sendable {
    struct Reply: Sendable {
        var status: HTTPResponseStatus = .ok
        var headers: [(String, String)] = []
        var body: String
        /// Held back this long first (a blocking query that waited).
        var delay: TimeAmount = .zero
    }

    let channel: Channel
    private let requestLog = NIOLockedValueBox<[String]>([])
    var port: Int { channel.localAddress?.port ?? 0 }
    /// "METHOD uri" of every request, the X-Consul-Token each carried, and any Metadata header.
    var requests: [String] { requestLog.withLockedValue { $0 } }

    /// On 127.0.0.1:0, or on a unix socket at `unixSocketPath`.
    init(group: EventLoopGroup, unixSocketPath: String? = nil,
         respond: @escaping @Sendable (_ method: HTTPMethod, _ uri: String) -> Reply) async throws {
        let log = requestLog
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(ScriptedHandler(respond: respond, log: log))
                }
            }
        if let unixSocketPath {
            channel = try await bootstrap.bind(unixDomainSocketPath: unixSocketPath, cleanupExistingSocketFile: true).get()
        } else {
            channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        }
    }

    func stop() async { try? await channel.close() }
}

private final class ScriptedHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let respond: @Sendable (HTTPMethod, String) -> ScriptedHTTPServer.Reply
    private let log: NIOLockedValueBox<[String]>
    private var head: HTTPRequestHead?

    init(respond: @escaping @Sendable (HTTPMethod, String) -> ScriptedHTTPServer.Reply, log: NIOLockedValueBox<[String]>) {
        self.respond = respond
        self.log = log
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request): head = request
        case .body: break
        case .end:
            guard let head else { return }
            // The Metadata header only when present (IMDS requests), so Consul-call lines stay as they were.
            let metadata = head.headers.first(name: "Metadata").map { " metadata=\($0)" } ?? ""
                + (head.headers.first(name: "Authorization").map { " authorization=\($0)" } ?? "")
            log.withLockedValue { $0.append("\(head.method) \(head.uri) token=\(head.headers.first(name: "X-Consul-Token") ?? "-")\(metadata)") }
            let reply = respond(head.method, head.uri)
            let context = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.value.eventLoop.scheduleTask(in: reply.delay) { [self] in
                let ctx = context.value
                var headers = HTTPHeaders(reply.headers)
                headers.replaceOrAdd(name: "Content-Length", value: "\(reply.body.utf8.count)")
                headers.replaceOrAdd(name: "Content-Type", value: "application/json")
                ctx.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: reply.status, headers: headers))), promise: nil)
                ctx.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: reply.body)))), promise: nil)
                ctx.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}

/// Collects log messages (message and metadata) so tests can check that a failure was logged.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    private let lines = NIOLockedValueBox<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        let fields = (metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        lines.withLockedValue { $0.append("\(level) \(message) \(fields)") }
    }

    var messages: [String] { lines.withLockedValue { $0 } }

    var logger: Logger { Logger(label: "recorded") { _ in self } }
}
