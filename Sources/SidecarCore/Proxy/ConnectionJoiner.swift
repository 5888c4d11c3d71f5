import NIOCore
import NIOPosix

/// Holds a connection while its partner is being set up: keeps the bytes that already arrived
/// (at most one read's worth, because reads are withheld) and releases them when joined.
class StagingHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private(set) var buffered: [ByteBuffer] = []
    private var readWithheld = false
    /// While holding, reads are withheld; the subclass decides when holding starts.
    var holding = false
    private var released = false
    /// The peer half-closed before the partner existed; replayed to the glue after joining.
    private var sawInputClosed = false

    private var context: ChannelHandlerContext?

    // Subclasses override these; declaring them here makes them the protocol witnesses
    // (a subclass-only method would never be called through ChannelHandler).
    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }
    func channelActive(context: ChannelHandlerContext) { context.fireChannelActive() }
    func channelInactive(context: ChannelHandlerContext) { context.fireChannelInactive() }
    func errorCaught(context: ChannelHandlerContext, error: Error) { context.fireErrorCaught(error) }
    /// Events other than EOF, for subclasses.
    func stagedEvent(context: ChannelHandlerContext, event: Any) { context.fireUserInboundEventTriggered(event) }

    final func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !released, let channelEvent = event as? ChannelEvent, channelEvent == .inputClosed {
            sawInputClosed = true
            return
        }
        stagedEvent(context: context, event: event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if released {
            context.fireChannelRead(data)
        } else {
            buffered.append(unwrapInboundIn(data))
        }
    }

    func read(context: ChannelHandlerContext) {
        if holding && !released {
            readWithheld = true
        } else {
            context.read()
        }
    }

    /// Installs `handlers` right after this one, passes them what was staged, and leaves the
    /// pipeline (a connection that turned out to carry the mux, not a single tunnel).
    func handOver(to handlers: [ChannelHandler]) throws {
        guard let context else { throw ChannelError.ioOnClosedChannel }
        try context.pipeline.syncOperations.addHandlers(handlers, position: .after(self))
        release()
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }

    /// Stops staging and passes everything held on to the handlers installed after us, in
    /// order: the bytes, then a staged EOF, then the withheld read. It must start here: fired
    /// from the pipeline head, an EOF would pass the TLS handler, which already reported it.
    fileprivate func release() {
        released = true
        guard let context else { return }
        let held = buffered
        buffered = []
        for bytes in held { context.fireChannelRead(wrapInboundOut(bytes)) }
        if !held.isEmpty { context.fireChannelReadComplete() }
        if sawInputClosed {
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else if readWithheld {
            context.read()
        }
    }
}

/// The handlers one side of a joined connection gets after its staging handler.
struct JoinSide {
    let channel: Channel
    /// Holds early bytes; nil for a freshly dialed channel whose autoRead is still off.
    let staging: StagingHandler?
    let handlers: [ChannelHandler]
}

enum ConnectionJoiner {
    /// Joins a mesh (TLS) channel and a local (plaintext) channel on the same event loop:
    /// installs each side's handlers (ending with the glue), replays what was staged through
    /// them, and lets reads flow.
    static func join(mesh: JoinSide, local: JoinSide) throws {
        mesh.channel.eventLoop.preconditionInEventLoop()
        precondition(mesh.channel.eventLoop === local.channel.eventLoop, "both halves must share an event loop")
        for side in [mesh, local] {
            try side.channel.pipeline.syncOperations.addHandlers(side.handlers)
        }
        for side in [mesh, local] {
            guard let staging = side.staging else {
                let channel = side.channel
                channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in channel.close(promise: nil) }
                continue
            }
            staging.release()
            side.channel.pipeline.syncOperations.removeHandler(staging, promise: nil)
        }
    }

    /// The usual join: raw bytes both ways.
    static func joinBytes(mesh: Channel, meshStaging: StagingHandler?, local: Channel, localStaging: StagingHandler?,
                          stats: ConnectionStats) throws {
        let glue = GlueHandler<ByteBuffer, ByteBuffer>.pair(stats: stats, meshPayload: \.readableBytes,
                                                            localPayload: \.readableBytes)
        try join(mesh: JoinSide(channel: mesh, staging: meshStaging, handlers: [glue.mesh]),
                 local: JoinSide(channel: local, staging: localStaging, handlers: [glue.local]))
    }
}

extension Optional where Wrapped == SocketAddress {
    /// "ip:port" (or "[v6]:port") for logs and audit lines.
    var auditDescription: String {
        guard let address = self, let ip = address.ipAddress, let port = address.port else {
            return self.map { "\($0)" } ?? "unknown"
        }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}

extension ClientBootstrap {
    /// Connects without name resolution when `host` is an IP literal (the common case for
    /// 127.0.0.1 local services and Consul-reported addresses); otherwise resolves as usual.
    func connect(toHost host: String, port: Int) -> EventLoopFuture<Channel> {
        if let address = try? SocketAddress(ipAddress: host, port: port) {
            return connect(to: address)
        }
        return connect(host: host, port: port)
    }
}
