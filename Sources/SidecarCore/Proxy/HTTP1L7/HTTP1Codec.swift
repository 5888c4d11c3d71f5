import NIOCore
import NIOHTTP1
import SidecarModel

/// What the request decoder learned beyond NIO's request head, for the filter of the same
/// connection (one event loop): each parsed request in order (HTTPServerPipelineHandler, in
/// between, may hold heads back while a response is in flight), and why the stream was refused.
final class HTTP1RequestLog {
    /// Two slots, not NIO's default 16 (16 requests' worth per connection): the ring grows
    /// once two requests wait, which only a pipelining client makes happen.
    var requests = CircularBuffer<HTTP1Request>(initialCapacity: 2)
    /// Set once; the decoder reads nothing after it.
    var refusal: (refusal: HTTP1Refusal, method: String?, target: String?)?
}

/// The mesh side of an HTTP/1.1 L7 connection: bytes in, requests out, read by our strict
/// reader (`HTTP1HeadReader`, `HTTP1RequestRules`, `ChunkedBodyReader`) instead of a lenient
/// general-purpose parser. Emits NIO's request parts with the normalised target and our own
/// framing field, so everything after it (the pipeline handler, the filter, the request
/// writer) sees the request exactly as it will be forwarded. Buffers at most one head
/// (`HTTP1HeadReader.maxHeadBytes`) plus one read; bodies are passed on as they arrive.
///
/// A refused stream is recorded in the log and reported as an `HTTPParserError`, which the
/// pipeline handler delivers in order (after the response in flight); nothing after it is read.
final class HTTP1RequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = HTTPServerRequestPart

    private enum State {
        case head(scanned: Int)
        case lengthBody(remaining: Int)
        case chunkedBody(ChunkedBodyReader)
        /// After a request that ends the connection (`Connection: close`, HTTP/1.0 without
        /// keep-alive): whatever follows is not a request of this connection.
        case finished
        case refused
    }

    private var state = State.head(scanned: 0)
    /// The request being read is the connection's last.
    private var lastOfConnection = false
    private let log: HTTP1RequestLog
    private let paths: PathNormalization
    private let underscores: UnderscoreHeaders

    init(log: HTTP1RequestLog, paths: PathNormalization, underscores: UnderscoreHeaders) {
        self.log = log
        self.paths = paths
        self.underscores = underscores
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        switch state {
        case .refused, .finished:
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        case .head(let scanned):
            let outcome = buffer.withUnsafeReadableBytes { HTTP1HeadReader.read($0, scanned: scanned) }
            switch outcome {
            case .needMore(let scanned):
                state = .head(scanned: scanned)
                return .needMoreData
            case .refused(let refusal):
                throw refuse(refusal, method: nil, target: nil)
            case .head(let head, let length):
                buffer.moveReaderIndex(forwardBy: length)
                switch HTTP1RequestRules.interpret(head, paths: paths, underscores: underscores) {
                case .failure(let refusal):
                    throw refuse(refusal, method: head.method, target: head.target)
                case .success(let request):
                    log.requests.append(request)
                    lastOfConnection = !request.keepAlive
                    context.fireChannelRead(wrapInboundOut(.head(request.nioHead)))
                    switch request.framing {
                    case .none, .length(0): finishRequest(context: context)
                    case .length(let length): state = .lengthBody(remaining: length)
                    case .chunked: state = .chunkedBody(ChunkedBodyReader())
                    }
                    return .continue
                }
            }
        case .lengthBody(let remaining):
            guard buffer.readableBytes > 0 else { return .needMoreData }
            let take = min(remaining, buffer.readableBytes)
            context.fireChannelRead(wrapInboundOut(.body(buffer.readSlice(length: take)!)))
            if take == remaining {
                finishRequest(context: context)
            } else {
                state = .lengthBody(remaining: remaining - take)
            }
            return .continue
        case .chunkedBody(var reader):
            guard buffer.readableBytes > 0 else { return .needMoreData }
            let result = buffer.withUnsafeReadableBytes { reader.feed($0) }
            switch result {
            case .failure(let refusal):
                throw refuse(refusal, method: nil, target: nil)
            case .success(let (events, consumed)):
                state = .chunkedBody(reader)
                var ranges: [Range<Int>] = []
                var ended = false
                for event in events {
                    switch event {
                    case .data(let range): ranges.append(range)
                    case .end: ended = true // always the last event of a feed
                    }
                }
                for piece in ChunkedBodyReader.bodyPieces(ranges) {
                    context.fireChannelRead(wrapInboundOut(.body(bodyPart(piece, of: buffer, allocator: context.channel.allocator))))
                }
                // Trailer fields are checked but not forwarded (as Envoy does by default): no
                // rule has seen them, and some services merge them into the headers.
                if ended { finishRequest(context: context) }
                buffer.moveReaderIndex(forwardBy: consumed)
                return .continue
            }
        }
    }

    /// The stream ended: an unfinished head or body is a cut request, never a complete one.
    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue, buffer.readableBytes > 0 {}
        switch state {
        case .head where buffer.readableBytes == 0, .refused, .finished:
            return .needMoreData
        case .head:
            throw refuse(HTTP1Refusal(400, "request head cut off by the end of the stream"), method: nil, target: nil)
        case .lengthBody, .chunkedBody:
            throw refuse(HTTP1Refusal(400, "request body cut off by the end of the stream"), method: nil, target: nil)
        }
    }

    /// A piece of chunk data (ranges relative to the reader index) as one buffer.
    private func bodyPart(_ piece: ChunkedBodyReader.BodyPiece, of buffer: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        switch piece {
        case .slice(let range):
            return buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!
        case .gathered(let ranges):
            var part = allocator.buffer(capacity: ranges.reduce(0) { $0 + $1.count })
            buffer.withUnsafeReadableBytes { input in
                for range in ranges { part.writeBytes(UnsafeRawBufferPointer(rebasing: input[range])) }
            }
            return part
        }
    }

    private func finishRequest(context: ChannelHandlerContext) {
        state = lastOfConnection ? .finished : .head(scanned: 0)
        context.fireChannelRead(wrapInboundOut(.end(nil)))
    }

    private func refuse(_ refusal: HTTP1Refusal, method: String?, target: String?) -> Error {
        state = .refused
        if log.refusal == nil { log.refusal = (refusal, method, target) }
        return HTTPParserError.invalidConstant
    }
}

extension HTTP1Request {
    /// NIO's request head for what is forwarded: normalised target, the framing we write.
    package var nioHead: HTTPRequestHead {
        var headers = HTTPHeaders(fields.map { ($0.name, $0.value) })
        switch framing {
        case .none: break
        case .length(let length): headers.add(name: "content-length", value: "\(length)")
        case .chunked: headers.add(name: "transfer-encoding", value: "chunked")
        }
        return HTTPRequestHead(version: HTTPVersion(major: 1, minor: minorVersion), method: HTTPMethod(rawValue: method),
                               uri: target.target, headers: headers)
    }
}

/// The local side of an HTTP/1.1 L7 connection: writes each request to the service in the
/// framing the decoder chose (its `content-length` or `transfer-encoding: chunked` field, the
/// only framing field left in the head), chunking the body itself. Unlike NIO's general
/// encoder it never infers framing from the method or passes a client's framing through.
package final class HTTP1RequestWriter: ChannelOutboundHandler {
    package typealias OutboundIn = HTTPClientRequestPart
    package typealias OutboundOut = ByteBuffer

    private var chunked = false

    /// A head exactly as written to the service (pure).
    package static func headText(_ head: HTTPRequestHead) -> String {
        var text = "\(head.method.rawValue) \(head.uri) HTTP/\(head.version.major).\(head.version.minor)\r\n"
        for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            chunked = head.headers.contains(name: "transfer-encoding")
            context.write(wrapOutboundOut(context.channel.allocator.buffer(string: Self.headText(head))), promise: promise)
        case .body(let body):
            guard chunked else {
                context.write(wrapOutboundOut(body.byteBuffer), promise: promise)
                return
            }
            guard body.readableBytes > 0 else {
                promise?.succeed(())
                return
            }
            context.write(wrapOutboundOut(context.channel.allocator.buffer(string: String(body.readableBytes, radix: 16) + "\r\n")),
                          promise: nil)
            context.write(wrapOutboundOut(body.byteBuffer), promise: nil)
            context.write(wrapOutboundOut(context.channel.allocator.buffer(string: "\r\n")), promise: promise)
        case .end:
            guard chunked else {
                promise?.succeed(())
                return
            }
            context.write(wrapOutboundOut(context.channel.allocator.buffer(string: "0\r\n\r\n")), promise: promise)
        }
    }
}

extension IOData {
    fileprivate var byteBuffer: ByteBuffer {
        switch self {
        case .byteBuffer(let buffer): return buffer
        case .fileRegion: preconditionFailure("the L7 filter only forwards buffers")
        }
    }
}
