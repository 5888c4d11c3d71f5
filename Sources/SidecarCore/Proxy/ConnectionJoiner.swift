import NIOCore
import NIOPosix

/// What arrives on a connection while its partner is being set up: the bytes (at most one
/// read's worth once reads are withheld), an EOF, and a read the pipeline asked for. Released,
/// in that order, to the handlers installed after the owner when the connection is joined.
struct StagedInput {
    enum State {
        /// Bytes are kept; reads still flow (a handshake needs them).
        case collecting
        /// Bytes are kept and reads withheld: a decision or a dial is pending.
        case holding(readWithheld: Bool)
        /// Joined or handed over: everything passes straight through.
        case released
    }

    private(set) var state = State.collecting
    private var buffered: [ByteBuffer] = []
    /// The peer half-closed before the partner existed; replayed to the glue after joining.
    private var sawInputClosed = false
    /// The owner's context, while it is in a pipeline.
    var context: ChannelHandlerContext?

    var isReleased: Bool { if case .released = state { return true } else { return false } }

    /// From now on no more is read until the release.
    mutating func hold() {
        if case .collecting = state { state = .holding(readWithheld: false) }
    }

    /// The bytes to pass on now; nil when they are kept.
    mutating func received(_ bytes: ByteBuffer) -> ByteBuffer? {
        guard !isReleased else { return bytes }
        buffered.append(bytes)
        return nil
    }

    /// Whether a read the pipeline asked for goes to the channel now.
    mutating func read() -> Bool {
        guard case .holding = state else { return true }
        state = .holding(readWithheld: true)
        return false
    }

    /// Whether an EOF is kept (true) or passes on.
    mutating func inputClosed() -> Bool {
        guard !isReleased else { return false }
        sawInputClosed = true
        return true
    }

    /// Ends staging: what to replay, in order.
    mutating func release() -> (bytes: [ByteBuffer], inputClosed: Bool, read: Bool) {
        let withheld: Bool
        if case .holding(let readWithheld) = state { withheld = readWithheld } else { withheld = false }
        defer {
            state = .released
            buffered = []
        }
        return (buffered, sawInputClosed, withheld)
    }
}

/// A handler that stages its connection's input (`StagedInput`) until the connection is joined
/// or handed over. The channel-handler methods below are the protocol witnesses; a conforming
/// handler implements `stagedEvent` for the events it decides on, and keeps `staged.context`
/// set if it implements `handlerAdded`/`handlerRemoved` itself.
protocol StagingHandler: ChannelDuplexHandler, RemovableChannelHandler, AnyObject
    where InboundIn == ByteBuffer, InboundOut == ByteBuffer, OutboundIn == ByteBuffer {
    var staged: StagedInput { get set }
    /// Inbound events other than EOF.
    func stagedEvent(context: ChannelHandlerContext, event: Any)
}

extension StagingHandler {
    func stagedEvent(context: ChannelHandlerContext, event: Any) { context.fireUserInboundEventTriggered(event) }
    func handlerAdded(context: ChannelHandlerContext) { staged.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { staged.context = nil }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let channelEvent = event as? ChannelEvent, channelEvent == .inputClosed, staged.inputClosed() { return }
        stagedEvent(context: context, event: event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let bytes = staged.received(unwrapInboundIn(data)) { context.fireChannelRead(wrapInboundOut(bytes)) }
    }

    func read(context: ChannelHandlerContext) {
        if staged.read() { context.read() }
    }

    /// Installs `handlers` right after this one, passes them what was staged, and leaves the
    /// pipeline (a connection that turned out to carry the mux, not a single tunnel).
    func handOver(to handlers: [ChannelHandler]) throws {
        guard let context = staged.context else { throw ChannelError.ioOnClosedChannel }
        try context.pipeline.syncOperations.addHandlers(handlers, position: .after(self))
        release()
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }

    /// Stops staging and passes everything held on to the handlers installed after us, in
    /// order: the bytes, then a staged EOF, then the withheld read. It must start here: fired
    /// from the pipeline head, an EOF would pass the TLS handler, which already reported it.
    func release() {
        let held = staged.release()
        guard let context = staged.context else { return }
        for bytes in held.bytes { context.fireChannelRead(wrapInboundOut(bytes)) }
        if !held.bytes.isEmpty { context.fireChannelReadComplete() }
        if held.inputClosed {
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        } else if held.read {
            context.read()
        }
    }
}

/// The handlers one side of a joined connection gets after its staging handler.
struct JoinSide {
    let channel: Channel
    /// Holds early bytes; nil for a freshly dialed channel whose autoRead is still off.
    let staging: (any StagingHandler)?
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
                // A channel that cannot read must not stay half joined.
                do { try side.channel.setAutoReadNow(true) } catch { side.channel.close(promise: nil) }
                continue
            }
            staging.release()
            side.channel.pipeline.syncOperations.removeHandler(staging, promise: nil)
        }
    }

    /// The usual join: raw bytes both ways.
    static func joinBytes(mesh: Channel, meshStaging: (any StagingHandler)?, local: Channel, localStaging: (any StagingHandler)?,
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
