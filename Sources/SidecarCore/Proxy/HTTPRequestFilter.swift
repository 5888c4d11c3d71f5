import Logging
import NIOCore
import NIOHTTP1
import SidecarTLS
import SidecarModel

/// Mesh side of an L7 (HTTP/1.1) connection: every request head is decided by the intentions
/// before any of it reaches the local service. Requests come from `HTTP1RequestDecoder`
/// (strict, normalised, canonical framing); allowed ones stream through (bodies are never
/// buffered whole); a denied one is answered `403` here, its body discarded, and the
/// connection stays usable. A request the decoder refused is answered with its status and
/// the connection closed: after a framing error, nothing more on it can be trusted.
/// HTTPServerPipelineHandler in front of us serializes pipelined requests, so a 403 can
/// never overtake the response to an earlier request.
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
        /// A refused stream, or a denial that ends the connection: nothing more is read or answered.
        case closing
    }

    struct Context {
        let listenerName: String
        let connectionID: String
        let muxConnectionID: String?
        let muxStream: Int?
        let peer: TLSPeer
        let peerAddress: String
        let destination: String
        let decide: (HTTPRequestFacts) -> IntentionDecision
        let audit: any AuditSink
        let logger: Logger
    }

    private var state = State.idle
    /// A response (the service's or ours) has started and not ended.
    private var responding = false
    /// A read waits for the peer to take what we answered (our channel turned writable).
    private var readWaitsForPeer = false
    private let info: Context
    private let log: HTTP1RequestLog

    init(_ info: Context, log: HTTP1RequestLog) {
        self.info = info
        self.log = log
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (_, .closing):
            break
        case (.head, .idle):
            guard let request = log.requests.popFirst() else { return context.close(promise: nil) }
            decide(request, context: context)
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

    private func decide(_ request: HTTP1Request, context: ChannelHandlerContext) {
        let facts = request.facts
        let decision = info.decide(facts)
        info.recordDecision(allowed: decision.allowed, reason: decision.reasonText, request: facts,
                            rawTarget: request.rawTarget == request.target.target ? nil : request.rawTarget)
        if decision.allowed {
            state = .forwarding
            context.fireChannelRead(wrapInboundOut(.head(request.nioHead)))
            if readWaitsForPeer && request.framing != .none && request.framing != .length(0) {
                // Its body flows whatever the peer reads. Asked for once this delivery is over:
                // a mux stream delivers at once on read, and its end of input could overtake
                // the body parts HTTPServerPipelineHandler still holds for this request.
                context.eventLoop.assumeIsolated().execute { [self] in readAgainIfWaiting(context) }
            }
            return
        }
        // With Expect: 100-continue the client will not send the body it announced, so the
        // request stream cannot be resynchronised: answer and close. Same if it asked to close.
        let closeAfter = request.expectsContinue || !request.keepAlive
        state = closeAfter ? .closing : .rejecting
        respond(context: context, version: HTTPVersion(major: 1, minor: request.minorVersion), status: .forbidden,
                text: "denied by intention: \(decision.reasonText)\n", close: closeAfter)
    }

    private func respond(context: ChannelHandlerContext, version: HTTPVersion, status: HTTPResponseStatus, text: String,
                         close: Bool) {
        let body = ByteBuffer(string: text)
        var headers = HTTPHeaders([("content-type", "text/plain; charset=utf-8"), ("content-length", "\(body.readableBytes)")])
        if close { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Once closing, the peer is not read any more: what it still sends waits in its own buffers
    /// (and flow control) instead of being read here to be dropped.
    ///
    /// Outside a forwarded request, a peer that does not read what we answer is not read
    /// either. Denied requests never reach the app, so the glue (which reads while the app
    /// can take bytes) would read on, and a peer pipelining denied requests without reading
    /// the 403s would queue them at our socket without bound. A forwarded body still flows,
    /// paced by the app: a client may send all of it before reading an early response.
    func read(context: ChannelHandlerContext) {
        guard state != .closing else { return }
        if state != .forwarding && !context.channel.isWritable {
            readWaitsForPeer = true
            return
        }
        readWaitsForPeer = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { readAgainIfWaiting(context) }
        context.fireChannelWritabilityChanged()
    }

    /// A read we held back is asked for again from the tail, so the glue checks once more that
    /// the app can take bytes (it passed the read down before we held it).
    private func readAgainIfWaiting(_ context: ChannelHandlerContext) {
        guard readWaitsForPeer, state != .closing else { return }
        readWaitsForPeer = false
        context.pipeline.read()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200: responding = true
        case .end: responding = false
        default: break
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is HTTPParserError || error is ByteToMessageDecoderError else {
            context.fireErrorCaught(error)
            return
        }
        guard state != .closing else { return }
        let refused = log.refusal ?? (HTTP1Refusal(400, "malformed request"), nil, nil)
        info.logger.info("HTTP request refused", metadata: [
            "source": "\(info.peer.identity)", "status": "\(refused.refusal.status)", "reason": "\(refused.refusal.reason)",
        ])
        var event = info.decisionEvent(allowed: false, reason: "request refused (\(refused.refusal.status)): \(refused.refusal.reason)",
                                       request: nil, rawTarget: refused.target)
        event.method = refused.method
        info.audit.record(event)
        // Answer only between requests; mid-request (ours or the service's response under
        // way, or a body being forwarded) the connection just ends, which the service sees as
        // a cut request and the client as a cut response.
        let between = state == .idle && !responding
        state = .closing
        if between {
            respond(context: context, version: .http1_1, status: HTTPResponseStatus(statusCode: refused.refusal.status),
                    text: "\(refused.refusal.reason)\n", close: true)
        } else {
            context.close(promise: nil)
        }
    }
}

extension HTTPRequestFilter.Context {
    /// One `http_request` audit line (a decided request, or a refused malformed one).
    func recordDecision(allowed: Bool, reason: String, request: HTTPRequestFacts?, rawTarget: String? = nil) {
        audit.record(decisionEvent(allowed: allowed, reason: reason, request: request, rawTarget: rawTarget))
    }

    func decisionEvent(allowed: Bool, reason: String, request: HTTPRequestFacts?, rawTarget: String?) -> AuditEvent {
        var event = AuditEvent(kind: .httpRequest, listener: listenerName, peerAddress: peerAddress,
                               source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                               destination: destination, decision: allowed ? "allow" : "deny", reason: reason,
                               method: request?.method, path: request?.path)
        event.requestTarget = rawTarget.map { String($0.prefix(1024)) }
        event.connectionID = connectionID
        event.muxConnectionID = muxConnectionID
        event.muxStream = muxStream
        return event
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
    /// The L7 join: our strict request decoder and writer, NIO's response codec, the request
    /// filter on the mesh side.
    static func joinHTTP(mesh: Channel, meshStaging: any StagingHandler, local: Channel, context: HTTPRequestFilter.Context,
                         options: HTTPRequestOptions, stats: ConnectionStats) throws {
        func payload(_ part: HTTPServerRequestPart) -> Int { if case .body(let b) = part { return b.readableBytes }; return 0 }
        func payload(_ part: HTTPClientResponsePart) -> Int { if case .body(let b) = part { return b.readableBytes }; return 0 }
        let glue = GlueHandler<HTTPServerRequestPart, HTTPClientResponsePart>.pair(
            stats: stats, meshPayload: payload, localPayload: payload)
        let log = HTTP1RequestLog()
        try join(
            mesh: JoinSide(channel: mesh, staging: meshStaging, handlers: [
                ActivityStamp(stats),
                HTTPResponseEncoder(),
                ByteToMessageHandler(HTTP1RequestDecoder(log: log, paths: options.paths, underscores: options.underscores)),
                HTTPServerPipelineHandler(),
                HTTPRequestFilter(context, log: log),
                HTTPBodyToIOData<HTTPResponseHead>(),
                glue.mesh,
            ]),
            local: JoinSide(channel: local, staging: nil, handlers: [
                HTTP1RequestWriter(),
                // Observes the requests written through it, so HEAD responses parse correctly.
                ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward)),
                HTTPBodyToIOData<HTTPRequestHead>(),
                glue.local,
            ])
        )
    }
}
