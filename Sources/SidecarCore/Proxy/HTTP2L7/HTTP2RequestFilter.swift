import NIOCore

/// Mesh side of an HTTP/2 L7 connection (protocol http2 or grpc), between the TLS handler and
/// the byte glue: the client's cleartext HTTP/2 (prior knowledge, relayed verbatim by the
/// calling sidecar) is read frame by frame and every request decided before any of its bytes
/// reach the service; see HTTP2RequestGate for the rules. Each decision is audited like an
/// HTTP/1.1 one; a protocol error is audited, answered with GOAWAY and closes the connection.
final class HTTP2RequestFilter: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Our own frames (denials, credit) written but not yet on the wire, or waiting for a
    /// frame boundary, beyond which the client is not read: a client that sends denied
    /// requests without reading the answers cannot make us buffer without bound.
    static let maxOwnFramesInFlight = 64 * 1024

    private let info: HTTPRequestFilter.Context
    private let core: HTTP2FilterCore
    private var failed = false
    private var wroteToClient = false
    private var ownBytesInFlight = 0
    private var readHeld = false

    init(_ info: HTTPRequestFilter.Context, grpcService: Bool, options: HTTPRequestOptions) {
        self.info = info
        core = HTTP2FilterCore(grpcService: grpcService, options: options, decide: info.decide)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let buffer = unwrapInboundIn(data)
        let step = buffer.withUnsafeReadableBytes { core.clientBytes($0) }
        for decided in step.decisions {
            var event = info.decisionEvent(allowed: decided.decision.allowed, reason: decided.decision.reasonText,
                                           request: decided.request, rawTarget: decided.rawTarget)
            if let method = decided.refusedMethod { event.method = method }
            info.audit.record(event)
        }
        for piece in step.toService {
            context.fireChannelRead(wrapInboundOut(Self.buffer(piece, of: buffer, allocator: context.channel.allocator)))
        }
        var lastWrite: EventLoopFuture<Void>?
        for frame in step.toClient { lastWrite = writeOwnFrame(frame, context: context) }
        guard let failure = step.failure else { return }
        failed = true
        info.recordDecision(allowed: false, reason: "malformed HTTP/2: \(failure.reason)", request: nil)
        info.logger.info("malformed HTTP/2 refused", metadata: [
            "source": "\(info.peer.identity)", "error": "\(failure.reason)",
        ])
        context.flush()
        let channel = context.channel
        if let lastWrite {
            lastWrite.whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if wroteToClient {
            wroteToClient = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !core.closed else {
            promise?.succeed(()) // the connection is ending with our GOAWAY; the service's rest is dropped
            return
        }
        let buffer = unwrapOutboundIn(data)
        let queuedBefore = core.queuedForClient
        let pieces = buffer.withUnsafeReadableBytes { core.serviceBytes($0) }
        if pieces == [.input(0..<buffer.readableBytes)] || buffer.readableBytes == 0 {
            context.write(data, promise: promise)
        } else {
            for (index, piece) in pieces.enumerated() {
                let last = index == pieces.count - 1
                context.write(wrapOutboundOut(Self.buffer(piece, of: buffer, allocator: context.channel.allocator)),
                              promise: last ? promise : nil)
            }
        }
        if core.queuedForClient < queuedBefore { resumeReadIfRoom(context: context) }
    }

    func read(context: ChannelHandlerContext) {
        if ownBytesInFlight + core.queuedForClient > Self.maxOwnFramesInFlight {
            readHeld = true
        } else {
            context.read()
        }
    }

    private func writeOwnFrame(_ frame: [UInt8], context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        let written = context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: frame)))
        wroteToClient = true
        trackOwnBytes(frame.count, until: written, context: context)
        return written
    }

    private func trackOwnBytes(_ count: Int, until written: EventLoopFuture<Void>, context: ChannelHandlerContext) {
        ownBytesInFlight += count
        written.assumeIsolated().whenComplete { [self] _ in
            ownBytesInFlight -= count
            resumeReadIfRoom(context: context)
        }
    }

    private func resumeReadIfRoom(context: ChannelHandlerContext) {
        if readHeld && ownBytesInFlight + core.queuedForClient <= Self.maxOwnFramesInFlight {
            readHeld = false
            context.read()
        }
    }

    private static func buffer(_ piece: HTTP2Piece, of input: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        switch piece {
        case .input(let range): return input.getSlice(at: input.readerIndex + range.lowerBound, length: range.count)!
        case .bytes(let bytes): return allocator.buffer(bytes: bytes)
        }
    }
}

extension ConnectionJoiner {
    /// The HTTP/2 L7 join: the byte join, with the request filter between the mesh side's
    /// staging handler (so staged bytes pass through it) and the glue.
    static func joinHTTP2(mesh: Channel, meshStaging: any StagingHandler, local: Channel, filter: HTTP2RequestFilter,
                          stats: ConnectionStats) throws {
        try mesh.pipeline.syncOperations.addHandlers([ActivityStamp(stats), filter], position: .after(meshStaging))
        try joinBytes(mesh: mesh, meshStaging: meshStaging, local: local, localStaging: nil, stats: stats)
    }
}
