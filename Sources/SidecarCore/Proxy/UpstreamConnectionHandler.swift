import FoundationEssentials
import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarMux
import SidecarTLS
import SidecarModel

/// Everything an upstream listener's connections need.
struct UpstreamRoute: Sendable {
    var upstream: Upstream
    var expectedIdentity: SPIFFEID
    var endpoints: EndpointRotation

    /// The identity `endpoint` must present: the upstream's, in the instance's datacenter.
    func expectedIdentity(for endpoint: Endpoint) -> SPIFFEID {
        guard let datacenter = endpoint.datacenter, datacenter != expectedIdentity.datacenter else { return expectedIdentity }
        return SPIFFEID(trustDomain: expectedIdentity.trustDomain, partition: expectedIdentity.partition,
                        namespace: expectedIdentity.namespace, datacenter: datacenter, service: expectedIdentity.service)
    }
    var tlsContext: @Sendable () -> TLSContext
    var handshakeTimeout: TimeAmount
    var idleTimeout: TimeAmount?
    /// Who may use this upstream; checked before anything is dialed.
    var callers: CallerPolicy
    /// Decides how each connection reaches an instance: a mux stream or its own connection.
    var connector: UpstreamConnector
}

/// On a plaintext connection accepted from the local app: dials the destination's sidecar with
/// mTLS, requires the expected identity, and only then forwards. Bytes the app sends early are
/// staged (reads withheld meanwhile).
final class UpstreamConnectionHandler: StagingHandler {
    var staged = StagedInput()
    /// A failure quicker than this was not a timeout: worth one more try.
    static let fastFailure = TimeAmount.milliseconds(500)
    private var fastFailures: [Endpoint] = []
    private var retriedFastFailures = false
    private let route: UpstreamRoute
    private let audit: any AuditSink
    private let logger: Logger
    /// Where the local connection is in its life.
    private enum State {
        /// Finding out who the local caller is, and whether it may use this upstream.
        case identifyingCaller
        /// Trying the destination's instances.
        case linking
        /// Joined to a mesh connection or stream.
        case joined
        /// The local connection went away (closed, aborted or refused).
        case closed
    }

    private var state = State.identifyingCaller
    private var callerAddress = "unknown"
    private var caller: LocalCaller?
    private var listenerName: String { route.upstream.listenerName }
    /// The audit lines' id for this tunnel, and its mux connection's once linked over one.
    private let connectionID: String
    private var muxConnectionID: String?
    private var muxStream: Int?

    /// Where the joined tunnel is described for `/connections`.
    private let table: ConnectionTable

    init(route: UpstreamRoute, connectionID: String, table: ConnectionTable, audit: any AuditSink, logger: Logger) {
        self.route = route
        self.table = table
        self.connectionID = connectionID
        self.audit = audit
        self.logger = logger
        staged.hold()
    }

    func channelActive(context: ChannelHandlerContext) {
        callerAddress = context.channel.remoteAddress.auditDescription
        context.fireChannelActive()
        identifyCaller(context.channel).hop(to: context.eventLoop).assumeIsolated().whenComplete { [self] result in
            guard state != .closed else { return }
            caller = try? result.get()
            guard route.callers.allows(caller) else {
                let reason = caller.map { "caller \($0) is not allowed to use upstream \(route.upstream.destinationName)" }
                    ?? "caller could not be identified; upstream \(route.upstream.destinationName) allows only listed users and groups"
                audit.record(stamped(AuditEvent(kind: .callerRefused, listener: listenerName, peerAddress: callerAddress,
                                                destination: route.expectedIdentity.uri, decision: "deny", reason: reason)))
                logger.warning("local caller refused", metadata: ["upstream": "\(route.upstream.destinationName)", "reason": "\(reason)"])
                ConnectionAbort.abort(context.channel)
                return
            }
            state = .linking
            attempt(context: context, remaining: route.endpoints.attemptOrder()[...], failures: [])
        }
    }

    /// Unix sockets: SO_PEERCRED, always (cheap, exact). TCP loopback: the /proc lookup, only
    /// when an allow-list needs it (it scans processes), on a thread of its own.
    private func identifyCaller(_ channel: Channel) -> EventLoopFuture<LocalCaller?> {
        if case .unixDomainSocket = channel.localAddress { return LocalCaller.fromPeerCredentials(channel) }
        guard route.callers.isRestricted, let listener = channel.localAddress, let caller = channel.remoteAddress else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        let promise = channel.eventLoop.makePromise(of: LocalCaller?.self)
        DispatchQueue.global().async {
            promise.succeed(LocalCaller.fromLoopbackTCP(caller: caller, listener: listener))
        }
        return promise.futureResult
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        context.fireChannelInactive()
    }

    private func attempt(context: ChannelHandlerContext, remaining: ArraySlice<Endpoint>, failures: [String]) {
        guard let endpoint = remaining.first else {
            // One more pass over the instances that failed at once (refused, unreachable: seen
            // transiently in the kernel while a neighbour went dark), as HAProxy's `retries`;
            // not over those that cost a timeout.
            if !retriedFastFailures, !fastFailures.isEmpty, state != .closed {
                retriedFastFailures = true
                let again = fastFailures
                fastFailures = []
                context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(100)) { [self] in
                    if state != .closed { attempt(context: context, remaining: again[...], failures: failures) }
                }
                return
            }
            let reason = failures.isEmpty ? "no known instance of \(route.upstream.destinationName)" : failures.joined(separator: "; ")
            audit.record(stamped(AuditEvent(kind: .upstreamFailed, listener: listenerName, peerAddress: callerAddress,
                                            destination: route.expectedIdentity.uri, reason: reason)))
            logger.warning("upstream connection failed", metadata: ["upstream": "\(route.upstream.destinationName)", "reason": "\(reason)"])
            ConnectionAbort.abort(context.channel)
            return
        }
        let tlsContext = route.tlsContext()
        if let expired = tlsContext.credentials.expiredLeafReason() {
            // Presenting an expired leaf only earns a refusal from the peer; say what is wrong here.
            attempt(context: context, remaining: [], failures: [ExpiredLeaf(reason: expired, tried: []).description])
            return
        }
        let link = route.connector.link(route, to: endpoint, on: context.eventLoop, listener: listenerName)
        let started = NIODeadline.now()
        link.hop(to: context.eventLoop).assumeIsolated().whenComplete { [self] result in
            if case .failure(let error) = result, .now() - started < Self.fastFailure,
               (error as? MuxError).map({ if case .connectRejected = $0 { return false } else { return true } }) ?? true {
                fastFailures.append(endpoint)
            }
            linked(result, context: context, endpoint: endpoint, remaining: remaining, failures: failures)
        }
    }

    private func linked(_ result: Result<MeshLink, Error>, context: ChannelHandlerContext, endpoint: Endpoint,
                        remaining: ArraySlice<Endpoint>, failures: [String]) {
        let local = context.channel
        switch result {
        case .success(let link):
            route.endpoints.succeeded(endpoint)
            let (remote, staging, peer) = link.parts
            // The caller went away while we dialed (only an abort makes the local channel
            // inactive; a half-close is staged and replayed). Nothing it sent was forwarded, so
            // the tunnel must end as an abort: a graceful close would hand the app a clean
            // END_STREAM, and an aborted upload would look complete.
            guard state != .closed else {
                ConnectionAbort.abort(remote)
                return
            }
            let stats = ConnectionStats(meter: audit.trafficMeter(listener: listenerName))
            do {
                try ConnectionJoiner.joinBytes(mesh: remote, meshStaging: staging, local: local, localStaging: self, stats: stats)
                state = .joined
            } catch {
                ConnectionAbort.abort(remote)
                ConnectionAbort.abort(local)
                return
            }
            var event = AuditEvent(kind: .upstreamConnected, listener: listenerName, peerAddress: callerAddress,
                                   source: nil, destination: peer.identity.uri, decision: "allow",
                                   reason: "\(endpoint) serial \(peer.certificateSerial) \(peer.protocolVersion)")
            if case .stream(_, _, let streamID, let carrier) = link {
                muxStream = Int(streamID)
                muxConnectionID = carrier
            } else {
                event = event.with(handshakeOf: peer)
            }
            audit.record(stamped(event))
            table.describe(local, as: TunnelRecord(
                connectionID: connectionID, muxConnectionID: muxConnectionID, muxStream: muxStream, direction: .upstream,
                listener: listenerName, peerIdentity: peer.identity.uri, peerAddress: callerAddress, caller: caller), stats: stats)
            recordClose(mesh: remote, local: local, peer: peer, endpoint: endpoint, stats: stats)
            let logger = self.logger, upstream = route.upstream.destinationName
            IdleTimeout.arm(route.idleTimeout, stats: stats, mesh: remote, local: local) {
                logger.info("closing idle upstream connection", metadata: ["upstream": "\(upstream)"])
            }
        case .failure(let error):
            // An instance that answered (a CONNECT refused with a status) is alive, and our own
            // expired leaf says nothing about it; anything else (no connection, no handshake, a
            // silent carrier) sends it to the back.
            let instanceFailed: Bool
            switch error {
            case MuxError.connectRejected: instanceFailed = false
            case is ExpiredLeaf: instanceFailed = false
            default: instanceFailed = true
            }
            if instanceFailed { route.endpoints.failed(endpoint) }
            logger.info("upstream instance failed", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
            if state == .closed { return }
            attempt(context: context, remaining: remaining.dropFirst(), failures: failures + ["\(endpoint): \(error)"])
        }
    }

    private func recordClose(mesh: Channel, local: Channel, peer: TLSPeer, endpoint: Endpoint, stats: ConnectionStats) {
        audit.recordClose(stamped(AuditEvent(kind: .connectionClosed, listener: listenerName, peerAddress: callerAddress,
                                             destination: peer.identity.uri)), mesh: mesh, local: local, stats: stats)
    }

    /// The event with this tunnel's ids and its local caller on it.
    private func stamped(_ event: AuditEvent) -> AuditEvent {
        var event = event.with(caller: caller)
        event.connectionID = connectionID
        event.muxConnectionID = muxConnectionID
        event.muxStream = muxStream
        return event
    }
}

/// On a dialed mesh connection: resolves when the server is verified, staging any application
/// bytes that arrived with the final handshake flight.
final class HandshakeWaiter: StagingHandler {
    var staged = StagedInput()
    private let promise: EventLoopPromise<TLSPeer>
    private var completed = false
    var handshake: EventLoopFuture<TLSPeer> { promise.futureResult }

    init(promise: EventLoopPromise<TLSPeer>) {
        self.promise = promise
    }

    func stagedEvent(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSEvent, case .handshakeCompleted(let peer) = tlsEvent, !completed {
            completed = true
            staged.hold()
            promise.succeed(peer)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !completed else {
            context.fireErrorCaught(error)
            return
        }
        completed = true
        promise.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !completed {
            completed = true
            promise.fail(TLSError.handshakeFailed("connection closed during handshake"))
        }
        context.fireChannelInactive()
    }

    /// A dial that fails (refused, timed out) tears the pipeline down without the channel ever
    /// becoming active or inactive: the promise must not be left dangling.
    func handlerRemoved(context: ChannelHandlerContext) {
        staged.context = nil
        if !completed {
            completed = true
            promise.fail(TLSError.handshakeFailed("connection closed before the handshake completed"))
        }
    }
}
