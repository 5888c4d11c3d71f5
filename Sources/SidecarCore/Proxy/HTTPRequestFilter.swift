import Logging
import NIOCore
import NIOHTTP1
import SidecarTLS

/// Mesh side of an L7 (HTTP/1.1) connection: every request head is decided by the intentions
/// before any of it reaches the local service. Allowed requests stream through (bodies are
/// never buffered whole); a denied one is answered `403` here, its body discarded, and the
/// connection stays usable. HTTPServerPipelineHandler in front of us serializes pipelined
/// requests, so a 403 can never overtake the response to an earlier request.
final class HTTPRequestFilter: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case forwarding
        /// Discarding a denied request's body; the 403 is already queued.
        case rejecting
    }

    struct Context {
        let listenerName: String
        let peer: TLSPeer
        let peerAddress: String
        let destination: String
        let decide: (HTTPRequestFacts) -> IntentionDecision
        let audit: any AuditSink
        let logger: Logger
    }

    private var state = State.idle
    private let info: Context

    init(_ info: Context) { self.info = info }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .idle):
            decide(head, context: context)
        case (.body, .forwarding):
            context.fireChannelRead(data)
        case (.end, .forwarding):
            state = .idle
            context.fireChannelRead(data)
        case (.body, .rejecting):
            break
        case (.end, .rejecting):
            state = .idle
        case (.head, _), (.body, .idle), (.end, .idle):
            // The decoder guarantees head/body*/end; anything else is a bug, not input.
            context.close(promise: nil)
        }
    }

    private func decide(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let facts = HTTPRequestFacts(method: head.method.rawValue, target: head.uri,
                                     headers: head.headers.map { ($0.name, $0.value) })
        if head.version.major >= 2 || head.method.rawValue == "PRI" {
            refuseHTTP2(context: context, facts: facts)
            return
        }
        let decision = info.decide(facts)
        info.recordDecision(allowed: decision.allowed, reason: decision.reasonText, request: facts)
        if decision.allowed {
            state = .forwarding
            context.fireChannelRead(wrapInboundOut(.head(head)))
            return
        }
        state = .rejecting
        // With Expect: 100-continue the client will not send the body it announced, so the
        // request stream cannot be resynchronised: answer and close. Same if it asked to close.
        let expectsContinue = head.headers[canonicalForm: "expect"].contains { $0.lowercased() == "100-continue" }
        let closeAfter = expectsContinue || !head.isKeepAlive
        let body = ByteBuffer(string: "denied by intention: \(decision.reasonText)\n")
        var headers = HTTPHeaders([("content-type", "text/plain; charset=utf-8"), ("content-length", "\(body.readableBytes)")])
        if closeAfter { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .forbidden, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if closeAfter {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// A protocol http listener reads HTTP/1.1 only: refuse HTTP/2 rather than pass it unchecked.
    private func refuseHTTP2(context: ChannelHandlerContext, facts: HTTPRequestFacts) {
        info.recordDecision(allowed: false, reason: "HTTP/2 is not supported on a listener with L7 intentions (protocol http); refused",
                            request: facts)
        info.logger.warning("HTTP/2 refused on an L7 listener", metadata: ["source": "\(info.peer.identity)"])
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is HTTPParserError {
            info.logger.info("malformed HTTP request refused", metadata: [
                "source": "\(info.peer.identity)", "error": "\(error)",
            ])
            info.recordDecision(allowed: false, reason: "malformed HTTP request: \(error)", request: nil)
        }
        context.fireErrorCaught(error)
    }
}

extension HTTPRequestFilter.Context {
    /// One `http_request` audit line (a decided request, or a refused malformed one).
    func recordDecision(allowed: Bool, reason: String, request: HTTPRequestFacts?) {
        audit.record(AuditEvent(kind: .httpRequest, listener: listenerName, peerAddress: peerAddress,
                                source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                                destination: destination, decision: allowed ? "allow" : "deny", reason: reason,
                                method: request?.method, path: request?.path))
    }
}

/// Passes HTTP parts between the two codecs: decoders produce `ByteBuffer` bodies, encoders take
/// `IOData` ones. Used for requests (mesh to local) and responses (local to mesh).
final class HTTPBodyToIOData<Head: Equatable & Sendable>: ChannelOutboundHandler {
    typealias OutboundIn = HTTPPart<Head, ByteBuffer>
    typealias OutboundOut = HTTPPart<Head, IOData>

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head): context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .body(let body): context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: promise)
        case .end(let trailers): context.write(wrapOutboundOut(.end(trailers)), promise: promise)
        }
    }
}

extension ConnectionJoiner {
    /// The L7 join: HTTP/1.1 codecs on both sides, the request filter on the mesh side.
    static func joinHTTP(mesh: Channel, meshStaging: StagingHandler, local: Channel, filter: HTTPRequestFilter,
                         stats: ConnectionStats) throws {
        func payload(_ part: HTTPServerRequestPart) -> Int { if case .body(let b) = part { return b.readableBytes }; return 0 }
        func payload(_ part: HTTPClientResponsePart) -> Int { if case .body(let b) = part { return b.readableBytes }; return 0 }
        let glue = GlueHandler<HTTPServerRequestPart, HTTPClientResponsePart>.pair(
            stats: stats, meshPayload: payload, localPayload: payload)
        try join(
            mesh: JoinSide(channel: mesh, staging: meshStaging, handlers: [
                HTTPResponseEncoder(),
                ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)),
                HTTPServerPipelineHandler(),
                HTTPServerProtocolErrorHandler(),
                filter,
                HTTPBodyToIOData<HTTPResponseHead>(),
                glue.mesh,
            ]),
            local: JoinSide(channel: local, staging: nil, handlers: [
                HTTPRequestEncoder(),
                // Observes the requests written through it, so HEAD responses parse correctly.
                ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward)),
                HTTPBodyToIOData<HTTPRequestHead>(),
                glue.local,
            ])
        )
    }
}
