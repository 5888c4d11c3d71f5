import Logging
import NIOConcurrencyHelpers
import NIOCore
import Synchronization
import SidecarMux
import SidecarTLS
import SidecarModel

/// What every connection and mux stream on the public listener shares: the settings in force
/// (one snapshot, replaced whole when the registration changes), the intentions, the TLS
/// contexts and the tables tunnels are tracked in. Handlers hold this one object.
///
/// It outlives any one socket: when the public address moves, connections accepted on the old
/// socket run on with the same context.
final class InboundListenerContext: Sendable {
    let listenerName = Sidecar.publicListenerName
    private let current: NIOLockedValueBox<InboundRoute>
    let contexts: TLSContextStore
    let authorizer: Authorizer
    let table: ConnectionTable
    let audit: any AuditSink
    let logger: Logger
    let evictions: HandshakeEvictionReport

    init(route: InboundRoute, contexts: TLSContextStore, authorizer: Authorizer,
         table: ConnectionTable, audit: any AuditSink, logger: Logger, evictions: HandshakeEvictionReport) {
        current = NIOLockedValueBox(route)
        self.contexts = contexts
        self.authorizer = authorizer
        self.table = table
        self.audit = audit
        self.logger = logger
        self.evictions = evictions
        applyLimits(route)
    }

    /// The settings in force: read once per connection (when its handshake completes) and
    /// once per mux stream, so a retarget applies to the next tunnel, whichever connection it
    /// arrives on.
    var route: InboundRoute { current.withLockedValue { $0 } }

    /// A new snapshot, in force for the next connection or stream. A drain, once begun, stays.
    func replace(with route: InboundRoute) {
        current.withLockedValue { value in
            let draining = value.draining
            value = route
            value.draining = route.draining || draining
        }
        applyLimits(route)
    }

    /// From now on every new mux connection is told GOAWAY at once and refuses its streams.
    func beginDraining() { current.withLockedValue { $0.draining = true } }

    /// Limits apply to the bound listener at once (a lowered or raised max_connections
    /// re-decides whether it accepts).
    private func applyLimits(_ route: InboundRoute) {
        table.configure(listenerName, maxConnections: route.maxConnections, handshakeBudget: route.handshakeBudget)
    }
}

extension InboundRoute {
    /// What a registration says about inbound connections.
    init(_ definition: ProxyDefinition, mux: MuxMode) {
        let config = definition.config
        self.init(destinationService: definition.destinationServiceName,
                  localHost: definition.localServiceAddress, localPort: definition.localServicePort ?? 0,
                  localSocketPath: definition.localServiceSocketPath,
                  localConnectTimeout: .milliseconds(Int64(config.localConnectTimeoutMs)),
                  maxConnectionLifetime: config.maxConnectionLifetimeNs.map { .nanoseconds($0) },
                  idleTimeout: config.idleTimeoutNs.map { .nanoseconds($0) },
                  proxyProtocol: config.proxyProtocol,
                  // http, http2 and grpc services get per-request L7 enforcement; tcp services
                  // are decided per connection.
                  l7Protocol: L7Protocol(configProtocol: config.protocol),
                  requestOptions: HTTPRequestOptions(paths: config.pathNormalization, underscores: config.underscoreHeaders),
                  // An inbound mux connection left without tunnels closes after idle_timeout too.
                  mux: mux == .prefer ? MuxSettings(maxConcurrentStreams: config.muxMaxStreams,
                                                    idleTimeout: config.idleTimeoutNs.map { .nanoseconds($0) },
                                                    keepaliveInterval: .nanoseconds(config.muxKeepaliveNs)) : nil,
                  maxConnections: config.maxConnections,
                  handshake: TLSHandlerConfiguration(handshakeTimeout: .milliseconds(Int64(config.handshakeTimeoutMs)),
                                                     firstByteTimeout: .milliseconds(Int64(config.firstByteTimeoutMs))),
                  handshakeBudget: config.maxPendingHandshakes)
    }
}

/// The public listener's socket, bound for one address and accepted on every event loop.
final class PublicListener: Sendable {
    /// "host:port" as the registration gives it.
    let address: String
    /// One server channel per event loop, on the one socket.
    let channels: [Channel]
    /// Where it listens (kept from the bind: NIO forgets a closed channel's address, and the
    /// socket listens on while any acceptor lives).
    let localAddress: SocketAddress?

    /// Set by `close()`: acceptors closing after it were asked to.
    private let closing = Atomic(false)

    private init(address: String, channels: [Channel]) {
        self.address = address
        self.channels = channels
        localAddress = channels.first?.localAddress
    }

    /// False once every acceptor has closed: NIO closes one on some accept errors (EPERM,
    /// EPROTO), the next takes the socket over, and if all went that way nothing accepts any
    /// more, while the process looks healthy. Readiness reports it.
    var isAccepting: Bool { channels.contains { $0.isActive } }
    /// `close()` was called (a move to a new address, or shutdown).
    var isClosing: Bool { closing.load(ordering: .relaxed) }

    /// Logs, once, when the last acceptor closes without `close()` having been called.
    private func watchAcceptors(logger: Logger) {
        let remaining = Atomic(channels.count)
        for channel in channels {
            channel.closeFuture.whenComplete { [self] _ in
                guard remaining.subtract(1, ordering: .relaxed).newValue == 0, !closing.load(ordering: .relaxed) else { return }
                logger.error("public listener stopped accepting: every acceptor closed (accept errors); not ready", metadata: [
                    "address": "\(address)",
                ])
            }
        }
    }

    static func bind(host: String, port: Int, shared: InboundListenerContext, group: EventLoopGroup) async throws -> PublicListener {
        let bootstrap = { (loop: EventLoop) in ListenerSocket.bootstrap(group: loop) { channel in
            let route = shared.route
            let connectionID = ConnectionID.next()
            if let evicted = shared.table.trackHandshaking(channel, listener: shared.listenerName, connectionID: connectionID) {
                evicted.close(promise: nil)
                shared.evictions.evicted(listener: shared.listenerName, budget: route.handshakeBudget, on: channel.eventLoop)
            }
            let server = shared.contexts.server
            // Never present an expired leaf: refuse the handshake instead (and say why).
            if let expired = server.credentials.expiredLeafReason() {
                var event = AuditEvent(kind: .handshakeRejected, listener: shared.listenerName,
                                       peerAddress: channel.remoteAddress.auditDescription, decision: "deny",
                                       reason: expired + "; refusing to present it")
                event.connectionID = connectionID
                shared.audit.record(event)
                shared.logger.error("leaf certificate expired and not renewed: refusing handshakes")
                return channel.close()
            }
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandlers(
                    HandshakeProgressHandler(table: shared.table),
                    TLSHandler(context: server, configuration: route.handshake),
                    InboundConnectionHandler(shared: shared, connectionID: connectionID)
                )
            }
        } }
        let channels = try await ListenerSocket.bindOnEveryLoop(bootstrap, host: host, port: port, what: shared.listenerName,
                                                                group: group, logger: shared.logger)
        shared.table.adopt(shared.listenerName, acceptors: channels)
        let listener = PublicListener(address: "\(host):\(port)", channels: channels)
        listener.watchAcceptors(logger: shared.logger)
        return listener
    }

    /// Closes every acceptor at once, so none is handed the socket while the others close.
    func close() async {
        closing.store(true, ordering: .relaxed)
        for channel in channels { channel.close(promise: nil) }
        for channel in channels { try? await channel.closeFuture.get() }
    }
}
