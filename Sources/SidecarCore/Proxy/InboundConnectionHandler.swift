import FoundationEssentials
import Logging
import NIOCore
import NIOPosix
import SidecarMux
import SidecarTLS
import SidecarModel

/// Everything an inbound (public listener) connection needs to decide and forward.
struct InboundRoute: Sendable {
    var destinationService: String
    var localHost: String
    var localPort: Int
    /// The local app listens on a unix socket (LocalServiceSocketPath) instead of host:port.
    var localSocketPath: String?
    var localConnectTimeout: TimeAmount
    var maxConnectionLifetime: TimeAmount?
    var idleTimeout: TimeAmount?
    var proxyProtocol: Bool
    /// The local service speaks HTTP (proxy config `protocol` http, http2 or grpc): requests
    /// are decided one by one with the intentions' L7 permissions. nil: tcp.
    var l7Protocol: L7Protocol?
    var l7: Bool { l7Protocol != nil }
    var requestOptions = HTTPRequestOptions()
    /// Accept the multiplexed transport (peers that negotiated its ALPN id) with these limits.
    var mux: MuxSettings?
    /// The sidecar is draining: a mux connection whose handshake completes now (accepted before
    /// the drain, it missed the drain's GOAWAY) is told GOAWAY at once and refuses every stream
    /// with REFUSED_STREAM, so its peer retries them elsewhere.
    var draining = false
    /// Tunnels (plain connections and mux streams) the listener takes at once.
    var maxConnections: Int
    /// The TLS handshake's time limits, and how many handshakes may be pending at once.
    var handshake: TLSHandlerConfiguration
    var handshakeBudget: Int
}

/// Sits after the TLS handler on an accepted public-listener connection. Waits for a verified
/// peer, asks the intentions, and only if allowed dials the local service. Until then the
/// local service sees nothing: no connection, no byte.
///
/// A peer that negotiated the mux gets a `MuxConnectionHandler` instead, and every CONNECT
/// stream on it gets an `InboundConnectionHandler` of its own: decided, audited, registered
/// for re-authorization and joined exactly like a connection, and answered with a status.
final class InboundConnectionHandler: StagingHandler {
    var staged = StagedInput()
    private enum State {
        case handshaking
        case connectingLocal(TLSPeer)
        case joined
        case closed
    }

    private var state = State.handshaking
    /// The listener's settings, intentions and tables.
    private let shared: InboundListenerContext
    private var listenerName: String { shared.listenerName }
    private var audit: any AuditSink { shared.audit }
    private var logger: Logger { shared.logger }
    /// The listener's tunnels: a mux connection's streams are admitted here.
    private var table: ConnectionTable { shared.table }
    private var peerAddress = "unknown"
    /// Set when this handler serves one stream of a mux connection.
    private let muxStream: Int32?
    /// The mux connection carrying this stream.
    private let carrier: InboundMuxCarrier?
    /// This connection's (or stream's) `connection_id`, and its mux connection's.
    let connectionID: String
    private let muxConnectionID: String?

    init(shared: InboundListenerContext, connectionID: String,
         muxStream: Int32? = nil, carrier: InboundMuxCarrier? = nil, muxConnectionID: String? = nil) {
        self.shared = shared
        self.connectionID = connectionID
        self.muxConnectionID = muxConnectionID
        self.muxStream = muxStream
        self.carrier = carrier
    }

    /// The same decisions for one stream of a mux connection.
    private func forStream(_ streamID: Int32, carrier: InboundMuxCarrier) -> InboundConnectionHandler {
        InboundConnectionHandler(shared: shared, connectionID: ConnectionID.next(), muxStream: streamID, carrier: carrier,
                                 muxConnectionID: connectionID)
    }

    private func authorize(_ source: SPIFFEID, _ destination: String, _ l7: Bool) -> IntentionDecision {
        shared.authorizer.decide(source: source, destination: destination, l7: l7)
    }

    /// The event with this tunnel's ids (and stream number) on it.
    private func stamped(_ event: AuditEvent) -> AuditEvent {
        var event = event
        event.connectionID = connectionID
        event.muxConnectionID = muxConnectionID
        event.muxStream = muxStream.map(Int.init)
        return event
    }

    /// Mux streams learn the outcome as an HTTP status; a plain connection just closes.
    private func answer(_ context: ChannelHandlerContext, status: Int) {
        guard muxStream != nil else { return }
        context.triggerUserOutboundEvent(MuxStreamResponse(status: status), promise: nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        staged.context = context
        // A stream's peer is its mux connection's, already formatted (inet_ntop per stream was 1 %).
        peerAddress = carrier?.peerAddress ?? context.channel.remoteAddress.auditDescription
    }

    func stagedEvent(context: ChannelHandlerContext, event: Any) {
        guard case .handshaking = state, let tlsEvent = event as? TLSEvent,
              case .handshakeCompleted(let peer) = tlsEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        let route = shared.route
        if muxStream == nil, let mux = route.mux, peer.applicationProtocol == MuxProtocol.alpn {
            // From now on the connection is transport; its streams are the tunnels.
            table.classify(context.channel, as: .muxCarrier)
            acceptMux(context: context, peer: peer, route: route, settings: mux)
            return
        }
        let decision = authorize(peer.identity, route.destinationService, route.l7)
        var event = AuditEvent(kind: .authorization, listener: listenerName, peerAddress: peerAddress,
                               source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                               destination: route.destinationService, decision: decision.allowed ? "allow" : "deny",
                               reason: decision.reasonText)
        if muxStream == nil { event = event.with(handshakeOf: peer) }
        audit.record(stamped(event))
        guard decision.allowed else {
            logger.info("inbound connection denied", metadata: [
                "source": "\(peer.identity)", "peer": "\(peerAddress)", "reason": "\(decision.reasonText)",
            ])
            state = .closed
            if muxStream == nil { context.channel.triggerUserOutboundEvent(TLSForgetSession(), promise: nil) }
            answer(context, status: 403)
            context.close(promise: nil)
            carrier?.streamRefused()
            return
        }
        if muxStream == nil { table.classify(context.channel, as: .tunnel) }
        state = .connectingLocal(peer)
        staged.hold()
        connectLocal(context: context, route: route, peer: peer)
    }

    /// The connection carries the mux: one handshake, many tunnels, each decided on its own.
    /// The carrier itself is decided as a new stream would be: a source denied outright gets
    /// none. It takes no new stream once the peer's leaf expires (in Connect, expiry is revocation), once it
    /// reaches max_connection_lifetime, once an intentions update denies its source, or after
    /// `InboundMuxCarrier.maxRefusedStreams` refused streams; its running streams finish
    /// unless they are themselves revoked.
    private func acceptMux(context: ChannelHandlerContext, peer: TLSPeer, route: InboundRoute, settings: MuxSettings) {
        let decision = authorize(peer.identity, route.destinationService, route.l7)
        guard decision.allowed else {
            // Audited like a refused plain connection: the peer's one decision.
            audit.record(stamped(AuditEvent(kind: .authorization, listener: listenerName, peerAddress: peerAddress,
                                            source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                                            destination: route.destinationService, decision: "deny",
                                            reason: decision.reasonText).with(handshakeOf: peer)))
            logger.info("mux connection denied", metadata: [
                "source": "\(peer.identity)", "peer": "\(peerAddress)", "reason": "\(decision.reasonText)",
            ])
            state = .closed
            context.channel.triggerUserOutboundEvent(TLSForgetSession(), promise: nil)
            context.close(promise: nil)
            return
        }
        audit.record(stamped(AuditEvent(kind: .muxConnected, listener: listenerName, peerAddress: peerAddress,
                                        source: peer.identity.uri, sourceSerial: peer.certificateSerial, decision: "allow",
                                        reason: "\(peer.protocolVersion) \(MuxProtocol.alpn)").with(handshakeOf: peer)))
        state = .joined
        let logger = self.logger, peerAddress = self.peerAddress, audit = self.audit, listenerName = self.listenerName
        let carrier = InboundMuxCarrier(peer: peer, listener: listenerName, peerAddress: peerAddress, connectionID: connectionID,
                                        audit: audit, logger: logger)
        let handler = MuxConnectionHandler(role: .server(initializer: { [self] stream, request in
            let streamHandler = forStream(request.streamID, carrier: carrier)
            do {
                try stream.pipeline.syncOperations.addHandler(streamHandler)
            } catch {
                stream.close(promise: nil)
                return
            }
            let current = shared.route, destination = current.destinationService
            func refuse(_ status: Int) {
                stream.triggerUserOutboundEvent(MuxStreamResponse(status: status), promise: nil)
                stream.close(promise: nil)
            }
            if Date() >= peer.certificateNotAfter { carrier.retire(because: "the peer's certificate expired") }
            if carrier.isRetired || current.draining {
                // Sent before the peer read our GOAWAY, or to a draining sidecar, which takes no
                // new tunnel at all: refused unprocessed, so the peer retries elsewhere.
                stream.triggerUserOutboundEvent(MuxStreamRefusal(), promise: nil)
                return
            }
            guard request.authority.lowercased() == destination.lowercased() else {
                logger.warning("mux stream for another service refused", metadata: [
                    "peer": "\(peerAddress)", "asked": "\(request.authority)", "serving": "\(destination)",
                ])
                carrier.streamRefused()
                return refuse(421)
            }
            // A stream is a tunnel like a connection, and counts toward max_connections; with
            // no backlog to wait in, one past the limit is refused (503) before anything else.
            guard table.admit(stream, listener: listenerName, connectionID: streamHandler.connectionID) else {
                let event = AuditEvent(kind: .tunnelRefused, listener: listenerName, peerAddress: peerAddress,
                                       source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                                       destination: destination, decision: "deny",
                                       reason: "max_connections (\(current.maxConnections)) reached")
                audit.record(streamHandler.stamped(event))
                logger.warning("mux stream refused: max_connections reached", metadata: [
                    "source": "\(peer.identity)", "peer": "\(peerAddress)", "max_connections": "\(current.maxConnections)",
                ])
                carrier.streamRefused()
                return refuse(503)
            }
            stream.pipeline.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(peer))
        }), settings: settings)
        carrier.handler = handler
        let source = peer.identity
        handler.onUnresponsivePeer = { silence in
            logger.warning("mux connection closed: peer unresponsive to keepalive", metadata: [
                "source": "\(source)", "peer": "\(peerAddress)", "silent_s": "\(Int(silence))",
            ])
        }
        handler.onProtocolError = { error in
            logger.warning("mux connection ended: protocol error", metadata: [
                "source": "\(source)", "peer": "\(peerAddress)", "error": "\(error)",
            ])
        }
        do {
            try handOver(to: [handler])
            if route.draining { handler.beginDraining() }
        } catch {
            context.close(promise: nil)
            return
        }
        carrier.armLimits(on: context.channel, lifetime: route.maxConnectionLifetime)
        // Registered for re-authorization, then decided once more: an intentions update whose
        // sweep ran between the first decision and the registration is not missed.
        carrier.register(context.channel, in: table)
        // With the route in force now: a registration change may also have landed meanwhile.
        let now = shared.route
        let current = authorize(peer.identity, now.destinationService, now.l7)
        if !current.allowed { carrier.retire(because: "denied since it was accepted: \(current.reasonText)") }
    }

    private func connectLocal(context: ChannelHandlerContext, route: InboundRoute, peer: TLSPeer) {
        let meshChannel = context.channel
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(route.localConnectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try ProxyChannelOptions.configure(channel, autoRead: false)
                    try channel.pipeline.syncOperations.addHandlers(PendingWriteCompactor(), OrderedHalfCloseHandler())
                }
            }
            .connect(route: route)
            .hop(to: context.eventLoop)
            .assumeIsolated().whenComplete { [self] result in
                switch (result, state) {
                case (.success(let local), .connectingLocal):
                    let stats = ConnectionStats(meter: audit.trafficMeter(listener: listenerName))
                    // Registered for re-authorization and checked against the intentions in
                    // force now, before a single staged byte reaches the app: a revocation
                    // that landed while we dialed is not missed.
                    register(mesh: meshChannel, local: local, peer: peer, route: route)
                    let current = authorize(peer.identity, route.destinationService, route.l7)
                    guard current.allowed else {
                        // Answered before the abort, so a stream's peer can learn why.
                        state = .closed
                        answer(context, status: 403)
                        carrier?.streamRefused()
                        if !Revocation.revoke(meshChannel, table: table, listener: listenerName,
                                              reason: "revoked by intentions update: \(current.reasonText)", audit: audit) {
                            // Already gone from the table (closed meanwhile): the app's side must not stay.
                            ConnectionAbort.abort(local)
                            ConnectionAbort.abort(meshChannel)
                        }
                        return
                    }
                    answer(context, status: 200)
                    do {
                        if route.proxyProtocol {
                            let header = ProxyProtocolV2.header(source: meshChannel.remoteAddress, destination: meshChannel.localAddress,
                                                                spiffeID: peer.identity.uri, tlsVersion: peer.protocolVersion)
                            try local.pipeline.syncOperations.addHandler(ProxyProtocolHeaderHandler(header: header))
                        }
                        switch route.l7Protocol {
                        case .http:
                            try ConnectionJoiner.joinHTTP(mesh: meshChannel, meshStaging: self, local: local,
                                                          context: requestContext(peer: peer, route: route),
                                                          options: route.requestOptions, stats: stats)
                        case .http2, .grpc:
                            let filter = HTTP2RequestFilter(requestContext(peer: peer, route: route),
                                                            grpcService: route.l7Protocol == .grpc, options: route.requestOptions)
                            try ConnectionJoiner.joinHTTP2(mesh: meshChannel, meshStaging: self, local: local,
                                                           filter: filter, stats: stats)
                        case nil:
                            try ConnectionJoiner.joinBytes(mesh: meshChannel, meshStaging: self, local: local,
                                                           localStaging: nil, stats: stats)
                        }
                        state = .joined
                        table.describe(meshChannel, as: TunnelRecord(
                            connectionID: connectionID, muxConnectionID: muxConnectionID, muxStream: muxStream.map(Int.init),
                            direction: .inbound, listener: listenerName, peerIdentity: peer.identity.uri,
                            peerAddress: peerAddress, intention: current.reasonText), stats: stats)
                        recordClose(mesh: meshChannel, local: local, peer: peer, route: route, stats: stats)
                        armLifetime(mesh: meshChannel, route: route)
                        let logger = self.logger, source = peer.identity
                        IdleTimeout.arm(route.idleTimeout, stats: stats, mesh: meshChannel, local: local) {
                            logger.info("closing idle connection", metadata: ["source": "\(source)"])
                        }
                    } catch {
                        local.close(promise: nil)
                        meshChannel.close(promise: nil)
                    }
                case (.success(let local), _):
                    local.close(promise: nil) // The mesh side went away while we dialed.
                case (.failure(let error), _):
                    audit.record(stamped(AuditEvent(kind: .localConnectFailed, listener: listenerName, peerAddress: peerAddress,
                                                    source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                                                    destination: route.destinationService,
                                                    reason: "local service \(route.localSocketPath ?? "\(route.localHost):\(route.localPort)") unreachable: \(error)")))
                    logger.warning("local service unreachable", metadata: [
                        "target": "\(route.localHost):\(route.localPort)", "error": "\(error)",
                    ])
                    state = .closed
                    answer(context, status: 502)
                    meshChannel.close(promise: nil)
                }
            }
    }

    /// What an L7 request filter (HTTP/1.1 or HTTP/2) needs to decide and audit requests.
    private func requestContext(peer: TLSPeer, route: InboundRoute) -> HTTPRequestFilter.Context {
        let authorizer = shared.authorizer
        return HTTPRequestFilter.Context(
            listenerName: listenerName, connectionID: connectionID, muxConnectionID: muxConnectionID,
            muxStream: muxStream.map(Int.init), peer: peer, peerAddress: peerAddress, destination: route.destinationService,
            decide: { authorizer.decide(request: $0, source: peer.identity, destination: route.destinationService) }, audit: audit, logger: logger)
    }

    /// Registers a connection about to be joined for re-authorization (as raw or filtered,
    /// which decides how it is re-checked). The caller then checks it once more against the
    /// intentions in force: they may have changed while the local service was being dialed,
    /// after the update's sweep over registered connections.
    private func register(mesh: Channel, local: Channel, peer: TLSPeer, route: InboundRoute) {
        let record = TunnelRecord(connectionID: connectionID, muxConnectionID: muxConnectionID, muxStream: muxStream.map(Int.init),
                                  direction: .inbound, listener: listenerName, peerIdentity: peer.identity.uri,
                                  peerAddress: peerAddress)
        let authorization = InboundAuthorization(source: peer.identity, sourceSerial: peer.certificateSerial,
                                                 destination: route.destinationService,
                                                 joinedAs: route.l7 ? .filtered : .raw, local: local)
        _ = table.registerInbound(mesh, as: record, authorization: authorization)
    }

    /// Cuts the tunnel at max_connection_lifetime.
    private func armLifetime(mesh: Channel, route: InboundRoute) {
        guard let lifetime = route.maxConnectionLifetime else { return }
        let table = self.table, audit = self.audit, listenerName = self.listenerName
        let seconds = Double(lifetime.nanoseconds) / 1e9
        let timer = mesh.eventLoop.scheduleTask(in: lifetime) {
            Revocation.revoke(mesh, table: table, listener: listenerName,
                              reason: "max_connection_lifetime (\(seconds) s) reached", audit: audit)
        }
        mesh.closeFuture.whenComplete { _ in timer.cancel() }
    }

    private func recordClose(mesh: Channel, local: Channel, peer: TLSPeer, route: InboundRoute, stats: ConnectionStats) {
        audit.recordClose(stamped(AuditEvent(kind: .connectionClosed, listener: listenerName, peerAddress: peerAddress,
                                             source: peer.identity.uri, sourceSerial: peer.certificateSerial,
                                             destination: route.destinationService)), mesh: mesh, local: local, stats: stats)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if case .handshaking = state, let tlsError = error as? TLSError {
            audit.record(stamped(AuditEvent(kind: .handshakeRejected, listener: listenerName, peerAddress: peerAddress,
                                            decision: "deny", reason: tlsError.description)))
            logger.info("inbound handshake rejected", metadata: ["peer": "\(peerAddress)", "reason": "\(tlsError)"])
        } else {
            logger.debug("inbound connection error", metadata: ["peer": "\(peerAddress)", "error": "\(error)"])
        }
        state = .closed
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .joined = state {} else { state = .closed }
        context.fireChannelInactive()
    }
}

extension ClientBootstrap {
    fileprivate func connect(route: InboundRoute) -> EventLoopFuture<Channel> {
        if let path = route.localSocketPath { return connect(unixDomainSocketPath: path) }
        return connect(toHost: route.localHost, port: route.localPort)
    }
}
