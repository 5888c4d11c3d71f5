import Logging
import NIOCore
import NIOPosix
import SidecarMux
import SidecarTLS
import SidecarModel

/// How a local connection reaches a destination instance, decided in this one place:
/// - `--mux off`: an mTLS connection of its own, always (and our TLS contexts offer no mux).
/// - the pool is draining (shutdown): a connection of its own, so nothing new rides a
///   connection that is about to go away.
/// - otherwise a stream on a pooled mux connection. The pool falls back to a connection of
///   its own for an instance that answered without the mux in the last minute, and uses the
///   connection that found that out rather than wasting it.
struct UpstreamConnector: Sendable {
    /// nil with `--mux off`.
    let pool: MuxPool?

    init(mode: MuxMode, settings: MuxSettings, audit: any AuditSink, logger: Logger) {
        switch mode {
        case .off: pool = nil
        case .prefer: pool = MuxPool(settings: settings, audit: audit, logger: logger)
        }
    }

    /// The ALPN ids our TLS contexts offer and accept.
    static func applicationProtocols(_ mode: MuxMode) -> [String] {
        switch mode {
        case .off: return []
        case .prefer: return [MuxProtocol.alpn]
        }
    }

    /// A verified link to `endpoint` for a local connection on `eventLoop` (the loop the mux
    /// pool keeps that connection's streams on), accepted by `listener`.
    func link(_ route: UpstreamRoute, to endpoint: Endpoint, on eventLoop: EventLoop, listener: String) -> EventLoopFuture<MeshLink> {
        let dial = route.dialer(for: endpoint, eventLoop: eventLoop)
        guard let pool, !pool.isDraining else { return dial(route.tlsContext()).map(MeshLink.raw) }
        return pool.link(on: eventLoop, to: endpoint, expected: route.expectedIdentity(for: endpoint), tlsContext: route.tlsContext,
                         authority: route.upstream.destinationName, listener: listener,
                         openTimeout: .milliseconds(Int64(route.upstream.connectTimeoutMs)), dial: dial)
    }
}

extension UpstreamRoute {
    /// Dials one mTLS connection to `endpoint` and verifies its identity, with the TLS context
    /// it is given (the one in force when the dial starts).
    func dialer(for endpoint: Endpoint, eventLoop: EventLoop) -> MeshDial {
        let expected = expectedIdentity(for: endpoint)
        let handshakeTimeout = self.handshakeTimeout, connectTimeout = TimeAmount.milliseconds(Int64(upstream.connectTimeoutMs))
        return { tlsContext in
            // Called on `eventLoop`, the new channel's only loop: its handlers stay there.
            let waiter = HandshakeWaiter(promise: eventLoop.makePromise())
            let handlers = NIOLoopBound((TLSHandler(context: tlsContext, expectedPeer: expected,
                                                    sessionKey: "\(endpoint)|\(expected.uri)",
                                                    configuration: TLSHandlerConfiguration(handshakeTimeout: handshakeTimeout)),
                                         waiter), eventLoop: eventLoop)
            let handshake = waiter.handshake
            return ClientBootstrap(group: eventLoop)
                .connectTimeout(connectTimeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try ProxyChannelOptions.configure(channel)
                        let (tls, waiter) = handlers.value
                        try channel.pipeline.syncOperations.addHandlers(tls, waiter)
                    }
                }
                .connect(toHost: endpoint.host, port: endpoint.port)
                .flatMap { remote in
                    handshake.map { DialedMeshConnection(channel: remote, waiter: NIOLoopBound(handlers.value.1, eventLoop: eventLoop), peer: $0) }
                }
        }
    }
}

/// A verified mTLS connection to a destination instance; application bytes that came with the
/// handshake wait in `waiter` (a handler of the channel, so bound to its loop).
struct DialedMeshConnection: Sendable {
    let channel: Channel
    let waiter: NIOLoopBound<HandshakeWaiter>
    let peer: TLSPeer
}

typealias MeshDial = @Sendable (TLSContext) -> EventLoopFuture<DialedMeshConnection>

/// How a local connection reaches its destination.
enum MeshLink: Sendable {
    /// A stream on a pooled mux connection (already answered 200), and that connection's
    /// `connection_id`.
    case stream(Channel, TLSPeer, streamID: Int32, carrier: String)
    /// An mTLS connection of its own.
    case raw(DialedMeshConnection)

    /// The channel to join with, what it staged, and the verified peer.
    var parts: (Channel, (any StagingHandler)?, TLSPeer) {
        switch self {
        case .stream(let channel, let peer, _, _): return (channel, nil, peer)
        case .raw(let dialed): return (dialed.channel, dialed.waiter.value, dialed.peer)
        }
    }
}

