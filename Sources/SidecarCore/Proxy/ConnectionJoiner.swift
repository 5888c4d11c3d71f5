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

    // Subclasses override these; declaring them here makes them the protocol witnesses
    // (a subclass-only method would never be called through ChannelHandler).
    private var context: ChannelHandlerContext?
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

    /// Hands over what was buffered and stops staging. Returns whether a read was withheld.
    fileprivate func release() -> (buffered: [ByteBuffer], readWithheld: Bool, inputClosed: Bool) {
        released = true
        defer { buffered = [] }
        return (buffered, readWithheld, sawInputClosed)
    }

    /// Passes a staged EOF on to the handlers after us (the glue). It must start here: fired
    /// from the pipeline head it would pass the TLS handler, which has already reported it.
    fileprivate func replayInputClosed() {
        context?.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }
}

enum ConnectionJoiner {
    /// Joins a mesh (TLS) channel and a local (plaintext) channel on the same event loop.
    /// Each side may have a staging handler holding early bytes; a side without one must have
    /// autoRead off until now (a freshly dialed channel), so no byte is read before the glue exists.
    static func join(mesh: Channel, meshStaging: StagingHandler?, local: Channel, localStaging: StagingHandler?,
                     stats: ConnectionStats) throws {
        mesh.eventLoop.preconditionInEventLoop()
        precondition(mesh.eventLoop === local.eventLoop, "both halves must share an event loop")
        let glue = GlueHandler.pair(stats: stats)
        try mesh.pipeline.syncOperations.addHandler(glue.mesh)
        try local.pipeline.syncOperations.addHandler(glue.local)

        for (staging, from, to) in [(meshStaging, mesh, local), (localStaging, local, mesh)] {
            guard let staging else {
                from.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in from.close(promise: nil) }
                continue
            }
            let (buffered, readWithheld, inputClosed) = staging.release()
            for bytes in buffered {
                if from === mesh { stats.bytesFromMesh += bytes.readableBytes } else { stats.bytesToMesh += bytes.readableBytes }
                to.write(bytes, promise: nil)
            }
            if !buffered.isEmpty { to.flush() }
            if inputClosed { staging.replayInputClosed() }
            from.pipeline.syncOperations.removeHandler(staging).whenComplete { _ in
                if readWithheld && !inputClosed { from.read() }
            }
        }
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
