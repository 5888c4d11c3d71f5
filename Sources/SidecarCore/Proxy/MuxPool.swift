import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarMux
import SidecarTLS
import SidecarModel

/// Upstream side of the multiplexed transport: pooled mTLS connections per destination instance
/// (and per event loop, so a stream and its local connection share a thread), each carrying up
/// to `maxStreams` tunnels as HTTP/2 CONNECT streams.
///
/// A connection stops taking new streams (and closes once its last stream ends) when our
/// certificates or trust change, when the peer's certificate expires, or on GOAWAY; new work
/// then goes to a fresh connection with a fresh handshake. Live streams are never cut for that.
/// An instance that does not negotiate the mux gets raw connections (dialed here) for a while,
/// and the connection that found out is used raw rather than wasted.
final class MuxPool: Sendable {
    /// What new pooled connections are made with; replaced when the registration changes
    /// (connections already open keep theirs).
    private let current: NIOLockedValueBox<MuxSettings>
    var settings: MuxSettings { current.withLockedValue { $0 } }
    private let audit: any AuditSink
    private let logger: Logger
    private let loops = NIOLockedValueBox<[ObjectIdentifier: LoopMuxPool]>([:])
    private let draining = NIOLockedValueBox(false)

    /// How long an instance that answered without the mux is dialed raw before asking again.
    static let rawRetryInterval = TimeAmount.seconds(60)
    /// Pooled connections with no stream for this long are closed.
    static let idleTimeout = TimeAmount.seconds(90)

    init(settings: MuxSettings, audit: any AuditSink, logger: Logger) {
        current = NIOLockedValueBox(Self.withDefaults(settings))
        self.audit = audit
        self.logger = logger
    }

    private static func withDefaults(_ settings: MuxSettings) -> MuxSettings {
        var settings = settings
        settings.idleTimeout = settings.idleTimeout ?? Self.idleTimeout
        return settings
    }

    /// New settings for connections dialed from now on.
    func update(_ settings: MuxSettings) {
        current.withLockedValue { $0 = Self.withDefaults(settings) }
    }

    /// A tunnel to `endpoint` for a local connection on `eventLoop`, accepted by `listener`
    /// (named in the audit line of a connection dialed for it).
    /// `openTimeout` bounds a stream open on a pooled connection (the upstream's connect
    /// timeout): a carrier that does not answer in time is written off and probed.
    /// `tlsContext` gives the context in force: read again for each try, so a renewal that
    /// lands between tries is used.
    func link(on eventLoop: EventLoop, to endpoint: Endpoint, expected: SPIFFEID, tlsContext: @escaping @Sendable () -> TLSContext,
              authority: String, listener: String, openTimeout: TimeAmount, dial: @escaping MeshDial) -> EventLoopFuture<MeshLink> {
        // Called on the local connection's own loop, which is the loop pool's: no hop needed.
        eventLoop.preconditionInEventLoop()
        let request = LoopMuxPool.Request(key: LoopMuxPool.Key(endpoint: endpoint, expected: expected.uri),
                                          tlsContext: tlsContext, authority: authority, listener: listener,
                                          openTimeout: openTimeout, settings: settings, dial: dial)
        return loopPool(eventLoop).link(request, retries: 3)
    }

    /// After `drain`: new tunnels get connections of their own (UpstreamConnector).
    var isDraining: Bool { draining.withLockedValue { $0 } }

    /// Shutdown: no new streams; each pooled connection closes once its streams are done.
    func drain() {
        draining.withLockedValue { $0 = true }
        for pool in loops.withLockedValue({ Array($0.values) }) {
            pool.eventLoop.execute { pool.drain() }
        }
    }

    /// Open pooled connections and the streams they carry (admin/tests).
    func counts(on eventLoop: EventLoop) -> EventLoopFuture<(connections: Int, streams: Int)> {
        let perLoop = loops.withLockedValue { Array($0.values) }.map { pool in pool.eventLoop.submit { pool.counts } }
        return EventLoopFuture.reduce((connections: 0, streams: 0), perLoop, on: eventLoop) { total, counts in
            (total.connections + counts.connections, total.streams + counts.streams)
        }
    }

    /// Destinations the pools keep state for (tests): one with no connection, no dial and no
    /// raw-only verdict in force is forgotten, so instances that come and go leave nothing.
    func destinationCount(on eventLoop: EventLoop) -> EventLoopFuture<Int> {
        let perLoop = loops.withLockedValue { Array($0.values) }.map { pool in pool.eventLoop.submit { pool.destinationCount } }
        return EventLoopFuture.reduce(0, perLoop, on: eventLoop, +)
    }

    private func loopPool(_ eventLoop: EventLoop) -> LoopMuxPool {
        loops.withLockedValue { pools in
            if let pool = pools[ObjectIdentifier(eventLoop)] { return pool }
            let pool = LoopMuxPool(eventLoop: eventLoop, audit: audit, logger: logger)
            pools[ObjectIdentifier(eventLoop)] = pool
            return pool
        }
    }
}

/// A stream open on a pooled connection got no answer within the upstream's connect timeout.
struct StreamOpenTimedOut: Error, CustomStringConvertible {
    let endpoint: Endpoint
    let timeout: TimeAmount
    var description: String { "no answer to a mux stream open within \(timeout.nanoseconds / 1_000_000) ms" }
}

/// Our leaf expired before a try (its renewal has not arrived): no dial, since the peer would
/// refuse it. Also the upstream handler's reason for its own check before the first try.
struct ExpiredLeaf: Error, CustomStringConvertible {
    let reason: String
    let tried: [String]
    var description: String {
        reason + " and was not renewed" + (tried.isEmpty ? "" : " (after \(tried.count) tries: " + tried.joined(separator: "; ") + ")")
    }
}

/// Every try to open a stream met a connection that was going away or gone.
struct MuxStreamNotOpened: Error, CustomStringConvertible {
    let tries: [String]
    var description: String { "no mux stream after \(tries.count) tries: " + tries.joined(separator: "; ") }
}

/// The pool of one event loop; touched only on that loop.
/// `@unchecked Sendable`: confined to one event loop, which every entry point hops to first.
final class LoopMuxPool: @unchecked Sendable {
    struct Key: Hashable, Sendable {
        let endpoint: Endpoint
        let expected: String
    }

    /// One local connection's ask for a tunnel.
    struct Request: Sendable {
        let key: Key
        let tlsContext: @Sendable () -> TLSContext
        let authority: String
        let listener: String
        let openTimeout: TimeAmount
        /// The pool's settings when the request was made.
        let settings: MuxSettings
        let dial: MeshDial
    }

    final class Pooled {
        let channel: Channel
        let handler: MuxConnectionHandler
        let peer: TLSPeer
        let tlsContext: TLSContext
        /// Its audit lines' `connection_id` (its tunnels' `mux_connection_id`).
        let connectionID = ConnectionID.next()

        init(channel: Channel, handler: MuxConnectionHandler, peer: TLSPeer, tlsContext: TLSContext) {
            self.channel = channel
            self.handler = handler
            self.peer = peer
            self.tlsContext = tlsContext
        }
    }

    enum DialOutcome {
        case mux(Pooled)
        /// The instance answered without the mux; the connection is usable raw.
        case raw(DialedMeshConnection)
    }

    final class Destination {
        var connections: [Pooled] = []
        var dialing: EventLoopFuture<Void>?
        /// Streams promised to waiters of the dial in progress.
        var reserved = 0
        var rawUntil: NIODeadline?
    }

    let eventLoop: EventLoop
    private let audit: any AuditSink
    private let logger: Logger
    private var destinations: [Key: Destination] = [:]
    private var draining = false

    init(eventLoop: EventLoop, audit: any AuditSink, logger: Logger) {
        self.eventLoop = eventLoop
        self.audit = audit
        self.logger = logger
    }

    var destinationCount: Int { destinations.count }

    /// Forgets a destination that holds nothing: no connection, no dial in progress, no
    /// raw-only verdict still in force. The next request for it starts afresh.
    private func forgetIfIdle(_ key: Key, _ destination: Destination) {
        guard destinations[key] === destination, destination.connections.isEmpty, destination.dialing == nil else { return }
        if let until = destination.rawUntil, NIODeadline.now() < until { return }
        destinations[key] = nil
    }

    var counts: (connections: Int, streams: Int) {
        let all = destinations.values.flatMap(\.connections)
        return (all.count, all.reduce(0) { $0 + $1.handler.openStreams })
    }

    /// - Parameter tried: the carriers and errors of earlier tries, for the error if all fail.
    func link(_ request: Request, retries: Int, tried: [String] = []) -> EventLoopFuture<MeshLink> {
        let tlsContext = request.tlsContext()
        // A retry may come after our leaf expired: the peer would only refuse it. Checked
        // before any destination state exists, so a refused request leaves none behind.
        if let expired = tlsContext.credentials.expiredLeafReason() {
            return eventLoop.makeFailedFuture(ExpiredLeaf(reason: expired, tried: tried))
        }
        let destination = destinations[request.key] ?? {
            let created = Destination()
            destinations[request.key] = created
            return created
        }()
        if draining { return request.dial(tlsContext).map(MeshLink.raw) }
        if let until = destination.rawUntil {
            if NIODeadline.now() < until { return request.dial(tlsContext).map(MeshLink.raw) }
            destination.rawUntil = nil
        }
        retireStale(destination, current: tlsContext)
        if let pooled = destination.connections.first(where: { $0.handler.acceptsNewStreams }) {
            let opened = open(on: pooled, request)
            dialAheadIfNeeded(request, destination, tlsContext: tlsContext)
            return retryingUnprocessed(opened, on: pooled, request, retries: retries, tried: tried)
        }
        if let dialing = destination.dialing, destination.reserved < request.settings.maxConcurrentStreams {
            destination.reserved += 1
            return dialing.flatMap { self.link(request, retries: retries, tried: tried) }
        }
        return startDial(request, destination, tlsContext: tlsContext).flatMap { outcome in
            switch outcome {
            // A connection dialed for this request can be retired before its first stream
            // opens (a leaf renewal on either side sends GOAWAY): retried like a pooled one.
            case .mux(let pooled):
                return self.retryingUnprocessed(self.open(on: pooled, request), on: pooled, request, retries: retries, tried: tried)
            case .raw(let dialed): return self.eventLoop.makeSucceededFuture(.raw(dialed))
            }
        }
    }

    /// A stream refused before it was processed (GOAWAY race, connection lost) has carried
    /// nothing yet: try again (up to 3 times: a CA rotation retires every connection at once),
    /// on whatever the pool has by then. A destination that answered (403, 502...) is not
    /// asked again. When every try fails, the error names each carrier and what it said.
    private func retryingUnprocessed(_ opened: EventLoopFuture<MeshLink>, on pooled: Pooled, _ request: Request,
                                     retries: Int, tried: [String]) -> EventLoopFuture<MeshLink> {
        // Every future here completes on this pool's loop, so its callbacks may touch the
        // loop-confined pool, connection and request state (`assumeIsolated`).
        opened.assumeIsolated().flatMapError { error in
            switch error as? MuxError {
            case .streamRefused, .connectionClosed:
                let tried = tried + ["mux connection \(pooled.connectionID): \(error)"]
                guard retries > 0 else { return self.eventLoop.makeFailedFuture(MuxStreamNotOpened(tries: tried)) }
                self.logger.debug("mux stream not processed; trying again", metadata: [
                    "endpoint": "\(request.key.endpoint)", "mux_connection_id": "\(pooled.connectionID)", "error": "\(error)",
                ])
                return self.link(request, retries: retries - 1, tried: tried)
            default:
                return self.eventLoop.makeFailedFuture(error)
            }
        }.nonisolated()
    }

    /// A stream on `pooled`, or `StreamOpenTimedOut` when the request's open timeout passes
    /// and nothing at all has arrived on the connection since the open went out: then the peer
    /// is taken for gone (link down, no RST), the connection takes no new stream and is probed
    /// (closed unless it answers within `probeWindow`), and a stream that opens late is closed
    /// unused. A connection that is still talking is busy, not dead: the open waits on.
    private func open(on pooled: Pooled, _ request: Request) -> EventLoopFuture<MeshLink> {
        let promise = eventLoop.makePromise(of: MeshLink.self)
        var settled = false
        let timeout = request.openTimeout, sent = eventLoop.now
        let timer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [logger] in
            guard !settled, pooled.handler.lastInputAt < sent else { return }
            settled = true
            logger.warning("mux stream open unanswered on a silent connection: written off and probed", metadata: [
                "endpoint": "\(request.key.endpoint)", "timeout_ms": "\(timeout.nanoseconds / 1_000_000)",
            ])
            pooled.handler.beginDraining()
            pooled.handler.probePeer(within: max(timeout, Self.probeWindow))
            promise.fail(StreamOpenTimedOut(endpoint: request.key.endpoint, timeout: timeout))
        }
        pooled.handler.openStream(authority: request.authority).assumeIsolated().whenComplete { result in
            timer.cancel()
            guard !settled else {
                // Opened after its caller gave up: never joined, so it ends as a reset.
                if case .success(let late) = result { ConnectionAbort.abort(late) }
                return
            }
            settled = true
            switch result {
            case .success(let stream):
                promise.succeed(.stream(stream, pooled.peer, streamID: (stream as? MuxStreamIdentifying)?.muxStreamID ?? 0,
                                        carrier: pooled.connectionID))
            case .failure(let error):
                promise.fail(error)
            }
        }
        return promise.futureResult
    }

    /// How long a written-off connection's peer has to answer the probe PING.
    static let probeWindow = TimeAmount.seconds(5)

    /// Opens the next connection before the current ones are full, so a burst of new local
    /// connections does not wait for a handshake.
    private func dialAheadIfNeeded(_ request: Request, _ destination: Destination, tlsContext: TLSContext) {
        guard destination.dialing == nil else { return }
        let usable = destination.connections.filter { !$0.handler.isRetired }
        let capacity = usable.reduce(0) { $0 + $1.handler.streamLimit }
        let used = usable.reduce(0) { $0 + $1.handler.openStreams }
        guard used * 4 >= capacity * 3 else { return }
        startDial(request, destination, tlsContext: tlsContext).whenSuccess { outcome in
            // Found out in the background that the instance speaks raw only: nobody needs this one.
            if case .raw(let dialed) = outcome { dialed.channel.close(promise: nil) }
        }
    }

    private func startDial(_ request: Request, _ destination: Destination, tlsContext: TLSContext) -> EventLoopFuture<DialOutcome> {
        let outcome = request.dial(tlsContext).hop(to: eventLoop).assumeIsolated().flatMapThrowing { dialed -> DialOutcome in
            guard dialed.peer.applicationProtocol == MuxProtocol.alpn else {
                destination.rawUntil = .now() + MuxPool.rawRetryInterval
                return .raw(dialed)
            }
            return .mux(try self.adopt(dialed, for: request, destination: destination, tlsContext: tlsContext))
        }.nonisolated()
        destination.dialing = outcome.map { _ in }
        outcome.assumeIsolated().whenComplete { _ in
            destination.dialing = nil
            destination.reserved = 0
            self.forgetIfIdle(request.key, destination)
        }
        return outcome
    }

    /// Puts the mux on a freshly verified connection and adds it to the pool.
    private func adopt(_ dialed: DialedMeshConnection, for request: Request, destination: Destination,
                       tlsContext: TLSContext) throws -> Pooled {
        let handler = MuxConnectionHandler(role: .client, settings: request.settings)
        let logger = self.logger, endpoint = request.key.endpoint
        handler.onUnresponsivePeer = { silence in
            logger.warning("mux connection closed: peer unresponsive to keepalive", metadata: [
                "endpoint": "\(endpoint)", "silent_s": "\(Int(silence))",
            ])
        }
        try dialed.waiter.value.handOver(to: [handler])
        let pooled = Pooled(channel: dialed.channel, handler: handler, peer: dialed.peer, tlsContext: tlsContext)
        destination.connections.append(pooled)
        let key = request.key
        // The connection was dialed on this pool's loop, so its close completes here too.
        dialed.channel.closeFuture.assumeIsolated().whenComplete { [weak self, weak destination] _ in
            self?.eventLoop.assumeIsolated().execute {
                guard let self, let destination else { return }
                destination.connections.removeAll { $0 === pooled }
                self.forgetIfIdle(key, destination)
            }
        }
        var event = AuditEvent(kind: .muxConnected, listener: request.listener,
                               peerAddress: dialed.channel.remoteAddress.auditDescription,
                               destination: dialed.peer.identity.uri, decision: "allow",
                               reason: "\(request.key.endpoint) serial \(dialed.peer.certificateSerial) \(dialed.peer.protocolVersion)")
            .with(handshakeOf: dialed.peer)
        event.connectionID = pooled.connectionID
        audit.record(event)
        return pooled
    }

    /// New certificates or trust, or an expired peer: finish what runs there, start nothing new.
    private func retireStale(_ destination: Destination, current: TLSContext) {
        let now = Date()
        for pooled in destination.connections where !pooled.handler.isRetired {
            if pooled.tlsContext !== current || pooled.peer.certificateNotAfter <= now {
                pooled.handler.beginDraining()
            }
        }
    }

    func drain() {
        draining = true
        for connection in destinations.values.flatMap(\.connections) { connection.handler.beginDraining() }
    }
}
