import FoundationEssentials
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarModel

package struct HTTPRequest: Sendable {
    package var method: HTTPMethod
    /// Decoded path segments after the leading "/" (so an ID with "%2F" stays one segment).
    package var segments: [String]
    /// As sent, query included (for logs and tests).
    package var uri: String
    package var query: [String: [String]]
    package var headers: HTTPHeaders
    package var body: Data

    /// The path as sent, without the query.
    package var path: String { uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "" }
    /// The first value, as Go's `url.Values.Get`.
    package func queryValue(_ name: String) -> String? { query[name]?.first }
    package func hasQuery(_ name: String) -> Bool { query[name] != nil }
}

package struct HTTPResponse: Sendable {
    package var status: HTTPResponseStatus
    package var headers: [(String, String)] = []
    package var body: Data

    package init(status: HTTPResponseStatus, headers: [(String, String)] = [], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    package static func text(_ status: HTTPResponseStatus, _ text: String) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "text/plain; charset=utf-8")], body: Data(text.utf8))
    }
}

/// The package's one HTTP/1.1 server (the admin listener, the dev agent, test stand-ins). Its
/// handler is async: each request runs in its own Task (a blocking query may wait minutes) and
/// its response is written back on the channel's loop, in request order on a keep-alive
/// connection.
package final class HTTPServer: Sendable {
    package typealias Handler = @Sendable (HTTPRequest) async -> HTTPResponse

    private struct Running {
        var listener: Channel?
        var connections: [ObjectIdentifier: Channel] = [:]
        /// True once stop began: a connection accepted just before the listener closed, whose
        /// initializer runs after stop took its list, is closed on arrival instead of living on.
        /// Cleared before a (re)start binds, so no connection of a starting server is refused.
        var stopping = false
    }

    private let handler: Handler
    private let maxBodyBytes: Int
    private let group: EventLoopGroup
    private let running = NIOLockedValueBox(Running())

    package init(maxBodyBytes: Int = 8 << 20, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                 handler: @escaping Handler) {
        self.handler = handler
        self.maxBodyBytes = maxBodyBytes
        self.group = group
    }

    /// Binds and returns the port.
    @discardableResult
    package func start(host: String, port: Int) async throws -> Int {
        try await start(at: try SocketAddress.makeAddressResolvingHost(host, port: port))
    }

    /// Binds a unix socket (replacing a stale socket file at `path`).
    package func start(unixSocketPath path: String) async throws {
        try? FileManager.default.removeItem(atPath: path)
        try await start(at: try SocketAddress(unixDomainSocketPath: path))
    }

    /// The bound TCP port (0 before start or on a unix socket).
    package var port: Int { running.withLockedValue { $0.listener?.localAddress?.port } ?? 0 }

    @discardableResult
    private func start(at address: SocketAddress) async throws -> Int {
        let handler = self.handler, maxBodyBytes = self.maxBodyBytes
        running.withLockedValue { $0.stopping = false }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [weak self] channel in
                self?.track(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(RequestHandler(handler: handler, maxBodyBytes: maxBodyBytes))
                }
            }
            .bind(to: address).get()
        running.withLockedValue { $0.listener = channel }
        return channel.localAddress?.port ?? 0
    }

    private func track(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        let accepted = running.withLockedValue { running -> Bool in
            if !running.stopping { running.connections[id] = channel }
            return !running.stopping
        }
        guard accepted else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [weak self] _ in
            self?.running.withLockedValue { _ = $0.connections.removeValue(forKey: id) }
        }
    }

    /// Closes the listener and every open connection; their pending requests are dropped.
    package func stop() async {
        let (listener, connections) = running.withLockedValue { running -> (Channel?, [Channel]) in
            defer {
                running.listener = nil
                running.stopping = true
            }
            return (running.listener, Array(running.connections.values))
        }
        try? await listener?.close()
        for connection in connections { try? await connection.close() }
    }
}

/// Collects one request (head + body) and hands it to the async handler. NIO's pipelining
/// handler delivers the next request only after this response's end, so responses stay in
/// order on keep-alive connections.
private final class RequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let handler: HTTPServer.Handler
    private let maxBodyBytes: Int
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()
    private var tooLarge = false
    private var inFlight: Task<Void, Never>?

    init(handler: @escaping HTTPServer.Handler, maxBodyBytes: Int) {
        self.handler = handler
        self.maxBodyBytes = maxBodyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !tooLarge else { return }  // answered 413; the connection is closing
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
            if let declared = head.headers.first(name: "Content-Length").flatMap(Int.init), declared > maxBodyBytes {
                refuseTooLarge(context: context)
            }
        case .body(var chunk):
            if body.readableBytes + chunk.readableBytes > maxBodyBytes { refuseTooLarge(context: context) } else { body.writeBuffer(&chunk) }
        case .end:
            guard let head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            let request = Self.makeRequest(head, body: Data(body.readableBytesView))
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let handler = self.handler
            let eventLoop = context.eventLoop
            inFlight = Task {
                let response = await handler(request)
                eventLoop.execute {
                    let (this, context) = bound.value
                    this.inFlight = nil
                    this.write(response, keepAlive: keepAlive, context: context)
                }
            }
        }
    }

    /// Answered at once, without reading the rest: the client may not send it all (or ever).
    private func refuseTooLarge(context: ChannelHandlerContext) {
        tooLarge = true
        head = nil
        body.clear()
        write(.text(.payloadTooLarge, "Request body too large"), keepAlive: false, lingering: true, context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Drops a pending blocking query when its client goes away (or stop() closes it).
        inFlight?.cancel()
        inFlight = nil
        context.fireChannelInactive()
    }

    private func write(_ response: HTTPResponse, keepAlive: Bool, lingering: Bool = false, context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders(response.headers)
        headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
        let done = context.writeAndFlushPromise()
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
        guard !keepAlive else { return }
        let channel = context.channel
        guard lingering else {
            done.futureResult.whenComplete { _ in channel.close(promise: nil) }
            return
        }
        // Unread input would make our close a reset, which can destroy the answer before the
        // client reads it: end our output only, discard what still arrives, close on the
        // client's EOF or after a few seconds.
        done.futureResult.whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
        }
    }

    /// A query string as Go's `url.ParseQuery` reads it (what Consul sees): `+` is a space,
    /// `%XX` is decoded, a pair that does not decode is dropped.
    static func parseQuery(_ text: String) -> [String: [String]] {
        var query: [String: [String]] = [:]
        for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let decode = { (raw: Substring) in PercentEncoding.decode(raw.replacing("+", with: " ")) }
            guard let name = decode(parts[0]), let value = parts.count > 1 ? decode(parts[1]) : "" else { continue }
            query[name, default: []].append(value)
        }
        return query
    }

    static func makeRequest(_ head: HTTPRequestHead, body: Data) -> HTTPRequest {
        let components = URLComponents(string: head.uri)
        let query = parseQuery(components?.percentEncodedQuery ?? "")
        let encodedPath = components?.percentEncodedPath ?? head.uri
        let segments = encodedPath.split(separator: "/", omittingEmptySubsequences: true)
            .map { PercentEncoding.decode($0) ?? String($0) }
        return HTTPRequest(method: head.method, segments: segments, uri: head.uri, query: query, headers: head.headers, body: body)
    }
}

private extension ChannelHandlerContext {
    func writeAndFlushPromise() -> EventLoopPromise<Void> { eventLoop.makePromise() }
}
