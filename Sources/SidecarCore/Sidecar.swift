import CSystemExtras
import Dispatch
import Foundation
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarMux
import SidecarTLS

/// Whether sidecars multiplex tunnels over pooled HTTP/2 connections (`--mux`).
public enum MuxMode: String, Sendable, CaseIterable {
    /// Never offer or accept the mux: one mTLS connection per tunnel, as Consul's own proxies.
    case off
    /// Offer it to destinations and accept it from sources; peers that do not speak it get raw.
    case prefer
}

/// Everything one sidecar process runs with, already loaded and validated.
public struct SidecarSettings: Sendable {
    public var definition: ProxyDefinition
    public var credentials: TLSCredentials
    /// nil until intentions have loaded: every inbound connection is refused meanwhile.
    public var intentions: IntentionSet?
    /// Static instances per upstream destination name (file mode).
    public var upstreamEndpoints: [String: [Endpoint]]
    /// Our datacenter: the default for upstreams that name none.
    public var datacenter: String
    public var audit: any AuditSink
    public var logger: Logger
    /// Fed every audit event by the Sidecar (no need to add it to `audit`); read at scrape time.
    public var metrics: SidecarMetrics?
    /// Upstream listeners may bind non-loopback addresses (off: they lend our identity).
    public var allowNonLoopbackUpstreams = false
    /// Instances arrive from Consul after start (no "no known instance" warning at bind).
    public var consulDiscovery = false
    public var mux = MuxMode.prefer

    public init(definition: ProxyDefinition, credentials: TLSCredentials, intentions: IntentionSet?,
                upstreamEndpoints: [String: [Endpoint]] = [:], datacenter: String = "dc1",
                audit: any AuditSink, logger: Logger, metrics: SidecarMetrics? = nil) {
        self.definition = definition
        self.credentials = credentials
        self.intentions = intentions
        self.upstreamEndpoints = upstreamEndpoints
        self.datacenter = datacenter
        self.audit = audit
        self.logger = logger
        self.metrics = metrics
    }
}

/// The TLS contexts in use. New handshakes read the current pair; replacing it never touches
/// live connections (each keeps the SSL object it started with).
final class TLSContextStore: Sendable {
    private let current: NIOLockedValueBox<(server: TLSContext, client: TLSContext, generation: Int)>
    /// ALPN ids offered (client) and accepted (server): the mux's, or none.
    private let applicationProtocols: [String]

    init(credentials: TLSCredentials, applicationProtocols: [String]) throws {
        self.applicationProtocols = applicationProtocols
        let built = try Self.build(credentials, applicationProtocols)
        current = NIOLockedValueBox((built.server, built.client, 0))
    }

    var server: TLSContext { current.withLockedValue { $0.server } }
    var client: TLSContext { current.withLockedValue { $0.client } }
    var credentials: TLSCredentials { server.credentials }

    /// Builds both contexts first (the slow part, on the caller's thread, never an event
    /// loop's), then swaps them in one step. Returns the credentials replaced.
    @discardableResult
    func replace(with credentials: TLSCredentials) throws -> TLSCredentials {
        let contexts = try Self.build(credentials, applicationProtocols)
        return current.withLockedValue { value in
            defer { value = (contexts.server, contexts.client, value.generation + 1) }
            return value.server.credentials
        }
    }

    /// Fresh contexts for the same credentials: new session-ticket keys (earlier tickets stop
    /// working) and an empty client session cache. Skipped if new credentials landed meanwhile.
    func rotateSessionKeys() throws {
        let (credentials, generation) = current.withLockedValue { ($0.server.credentials, $0.generation) }
        let contexts = try Self.build(credentials, applicationProtocols)
        current.withLockedValue { value in
            if value.generation == generation { value = (contexts.server, contexts.client, generation + 1) }
        }
    }

    private static func build(_ credentials: TLSCredentials, _ alpn: [String]) throws -> (server: TLSContext, client: TLSContext) {
        (try TLSContext(role: .server, credentials: credentials, applicationProtocols: alpn),
         try TLSContext(role: .client, credentials: credentials, applicationProtocols: alpn))
    }
}

/// One running sidecar: the public (inbound) listener and one listener per upstream.
public final class Sidecar: Sendable {
    let settings: SidecarSettings
    private let group: EventLoopGroup
    private let contexts: TLSContextStore
    private let intentions: NIOLockedValueBox<IntentionSet?>
    private let listeners = NIOLockedValueBox<[String: Channel]>([:])
    /// The registration in force: the public listener reads it per connection (local target,
    /// timeouts, protocol), so a retarget needs no rebind. Replaced by `apply(_:)`.
    private let definitionBox: NIOLockedValueBox<ProxyDefinition>
    /// What each bound upstream listener was bound with, to tell what changed on `apply(_:)`.
    private let boundUpstreams = NIOLockedValueBox<[String: Upstream]>([:])
    /// The public listener's bind address as bound.
    private let boundPublic = NIOLockedValueBox<String?>(nil)
    private let registry = ConnectionRegistry()
    private let upstreamInstances = NIOLockedValueBox<[String: EndpointRotation]>([:])
    let tracker = ConnectionTracker()
    private let draining = NIOLockedValueBox(false)
    private let expiryWarnedSerial = NIOLockedValueBox<String?>(nil)
    private let timers = NIOLockedValueBox<[RepeatedTask]>([])
    /// Upstream side of the mux; nil when it is off.
    private let muxPool: MuxPool?

    public init(settings: SidecarSettings, group: EventLoopGroup) throws {
        try settings.definition.validateUpstreamBinds(allowNonLoopback: settings.allowNonLoopbackUpstreams)
        var settings = settings
        if let metrics = settings.metrics { settings.audit = AuditFanOut([settings.audit, metrics]) }
        self.settings = settings
        self.group = group
        self.contexts = try TLSContextStore(credentials: settings.credentials,
                                            applicationProtocols: settings.mux == .prefer ? [MuxProtocol.alpn] : [])
        self.muxPool = settings.mux == .prefer
            ? MuxPool(settings: Self.upstreamMuxSettings(settings.definition.config), audit: settings.audit, logger: settings.logger)
            : nil
        self.intentions = NIOLockedValueBox(settings.intentions)
        self.definitionBox = NIOLockedValueBox(settings.definition)
        if let intentions = settings.intentions { Self.warnUnevaluable(intentions, logger: settings.logger) }
        // Static endpoints are given by destination name; each upstream of that name uses them.
        for (name, endpoints) in settings.upstreamEndpoints {
            updateInstances(endpoints, for: name)
            for upstream in settings.definition.upstreams where upstream.destinationName == name && upstream.instanceKey != name {
                updateInstances(endpoints, for: upstream.instanceKey)
            }
        }
    }

    /// What the upstream side's pooled mux connections are made with.
    private static func upstreamMuxSettings(_ config: ProxyConfig) -> MuxSettings {
        MuxSettings(maxConcurrentStreams: config.muxMaxStreams, keepaliveInterval: .nanoseconds(config.muxKeepaliveNs))
    }

    /// The registration in force (it changes in Consul mode).
    public var definition: ProxyDefinition { definitionBox.withLockedValue { $0 } }

    public static let publicListenerName = "public"

    /// http, http2 and grpc services get per-request L7 enforcement (HTTPRequestFilter,
    /// HTTP2RequestFilter); tcp services are decided per connection.
    private static func l7Protocol(_ definition: ProxyDefinition) -> L7Protocol? { L7Protocol(configProtocol: definition.config.protocol) }

    /// One warning per upstream of the registration that gets no listener, with why.
    private func reportSkippedUpstreams(_ skipped: [String]) {
        for line in skipped { settings.logger.warning("upstream skipped", metadata: ["reason": "\(line)"]) }
    }

    /// Binds every listener. Throws (naming the address) if any cannot be bound.
    public func start() async throws {
        let definition = self.definition
        reportSkippedUpstreams(definition.skippedUpstreams)
        try await reconcilePublicListener(definition)
        for upstream in definition.upstreams {
            try await bindUpstream(upstream)
        }
        let expiryCheck = group.next().scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(30)) { [weak self] _ in
            self?.warnIfExpiring()
        }
        // Session-ticket keys live in the SSL_CTX: replacing the contexts (off the event loop)
        // bounds how long any ticket can be used.
        let ticketLifetime = TimeAmount.seconds(Int64(TLSContext.sessionLifetimeSeconds))
        let contexts = self.contexts, logger = settings.logger
        let keyRotation = group.next().scheduleRepeatedTask(initialDelay: ticketLifetime, delay: ticketLifetime) { _ in
            DispatchQueue.global().async {
                do { try contexts.rotateSessionKeys() } catch {
                    logger.error("session ticket key rotation failed", metadata: ["error": "\(error)"])
                }
            }
        }
        timers.withLockedValue { $0 = [expiryCheck, keyRotation] }
    }

    /// Applies a changed registration live (Consul mode): upstream listeners that appeared are
    /// bound, those that disappeared are closed, changed ones are rebound; the public listener
    /// is rebound only if its address moved. Live connections are never touched: a closed
    /// listener's accepted connections run on. The local target, timeouts and protocol take
    /// effect for the next connection. Throws if a listener cannot be bound (the rest applied).
    public func apply(_ newDefinition: ProxyDefinition) async throws {
        try newDefinition.validateUpstreamBinds(allowNonLoopback: settings.allowNonLoopbackUpstreams)
        let old = definitionBox.withLockedValue { value in
            defer { value = newDefinition }
            return value
        }
        guard !isDraining else { return }
        if newDefinition.skippedUpstreams != old.skippedUpstreams { reportSkippedUpstreams(newDefinition.skippedUpstreams) }
        // Limits apply to the listeners already bound too, at once (a lowered or raised
        // max_connections re-decides whether each accepts).
        tracker.configure(Self.publicListenerName, maxConnections: newDefinition.config.maxConnections,
                          handshakeBudget: newDefinition.config.maxPendingHandshakes)
        for upstream in newDefinition.upstreams {
            tracker.configure(upstream.listenerName, maxConnections: newDefinition.config.maxConnections)
        }
        // Upstream listeners read their timeouts per connection; the pool's settings apply to
        // the connections it dials from now on.
        muxPool?.update(Self.upstreamMuxSettings(newDefinition.config))
        var failures: [String] = []
        do { try await reconcilePublicListener(newDefinition) } catch { failures.append("\(error)") }
        let wanted = Dictionary(newDefinition.upstreams.map { ($0.listenerName, $0) }, uniquingKeysWith: { first, _ in first })
        for (name, upstream) in boundUpstreams.withLockedValue({ $0 }) where wanted[name] != upstream {
            await closeListener(name)
            settings.logger.notice("upstream listener closed", metadata: ["listener": "\(name)", "address": "\(upstream.listenerKey)"])
        }
        for upstream in newDefinition.upstreams where boundUpstreams.withLockedValue({ $0[upstream.listenerName] }) == nil {
            do { try await bindUpstream(upstream) } catch { failures.append("\(error)") }
        }
        if old.localServiceAddress != newDefinition.localServiceAddress || old.localServicePort != newDefinition.localServicePort
            || old.localServiceSocketPath != newDefinition.localServiceSocketPath {
            settings.logger.notice("local service retargeted for new connections", metadata: [
                "local_service": "\(newDefinition.localServiceSocketPath.map { "unix:\($0)" } ?? "\(newDefinition.localServiceAddress):\(newDefinition.localServicePort ?? 0)")",
            ])
        }
        settings.audit.record(AuditEvent(kind: .configReloaded, listener: "", destination: newDefinition.name,
                                         decision: failures.isEmpty ? "applied" : "partly_applied",
                                         reason: failures.isEmpty ? Self.describeChange(from: old, to: newDefinition)
                                             : failures.joined(separator: "; ")))
        if !failures.isEmpty { throw SidecarError.reconfigurationFailed(failures) }
    }

    /// What a registration change changed, for its audit line ("upstreams, local service").
    static func describeChange(from old: ProxyDefinition, to new: ProxyDefinition) -> String {
        var parts: [String] = []
        if old.upstreams != new.upstreams { parts.append("upstreams") }
        if old.publicBindAddress != new.publicBindAddress || old.publicBindPort != new.publicBindPort { parts.append("public listener") }
        if old.localServiceAddress != new.localServiceAddress || old.localServicePort != new.localServicePort
            || old.localServiceSocketPath != new.localServiceSocketPath { parts.append("local service") }
        if old.config != new.config { parts.append("proxy config") }
        return parts.isEmpty ? "no change to listeners, local service or proxy config" : "changed: " + parts.joined(separator: ", ")
    }

    /// Replaces the known instances of an upstream destination (Consul's health/connect),
    /// keyed by `Upstream.instanceKey`.
    public func updateInstances(_ endpoints: [Endpoint], for destination: String) {
        instances(of: destination).replace(endpoints)
    }

    /// The instances of a destination, kept across listener rebinds: they belong to the
    /// destination, not to the listener.
    private func instances(of destination: String) -> EndpointRotation {
        upstreamInstances.withLockedValue { value in
            if let existing = value[destination] { return existing }
            let created = EndpointRotation([])
            value[destination] = created
            return created
        }
    }

    /// Our datacenter (the `dc` of our SPIFFE IDs).
    public var datacenter: String { settings.datacenter }

    /// Instances currently known per upstream destination.
    public var upstreamInstanceList: [String: [Endpoint]] {
        upstreamInstances.withLockedValue { $0.mapValues(\.endpoints) }
    }

    /// Binds, moves or closes the public listener to match `definition`.
    private func reconcilePublicListener(_ definition: ProxyDefinition) async throws {
        let hasTarget = definition.localServicePort != nil || definition.localServiceSocketPath != nil
        let address = definition.publicBindPort.flatMap { hasTarget ? "\(definition.publicBindAddress):\($0)" : nil }
        let bound = boundPublic.withLockedValue { $0 }
        guard address != bound else { return }
        if bound != nil { await closeListener(Self.publicListenerName) }
        guard let port = definition.publicBindPort, hasTarget else {
            settings.logger.notice("no public listener: the registration has no port or no local_service_port", metadata: [
                "service": "\(definition.name)",
            ])
            return
        }
        let channel = try await bindPublicListener(host: definition.publicBindAddress, port: port)
        listeners.withLockedValue { $0[Self.publicListenerName] = channel }
        boundPublic.withLockedValue { $0 = address }
    }

    private func bindUpstream(_ upstream: Upstream) async throws {
        let channel = try await bindUpstreamListener(upstream)
        listeners.withLockedValue { $0[upstream.listenerName] = channel }
        boundUpstreams.withLockedValue { $0[upstream.listenerName] = upstream }
    }

    /// Closes a listener; it disappears from `boundAddress(of:)` only once its port is closed.
    private func closeListener(_ name: String) async {
        let channel = listeners.withLockedValue { $0[name] }
        try? await channel?.close()
        listeners.withLockedValue { value in
            if let channel, value[name] === channel { value[name] = nil }
        }
        boundUpstreams.withLockedValue { $0[name] = nil }
        if name == Self.publicListenerName { boundPublic.withLockedValue { $0 = nil } }
    }

    /// Warns (once per certificate) when less than 10% of the leaf's lifetime remains and no
    /// renewal has arrived, so operators hear about a stuck renewal before handshakes fail.
    func warnIfExpiring(now: Date = Date()) {
        let credentials = contexts.credentials
        let remaining = credentials.remainingLifetimeFraction(now: now)
        guard remaining < 0.1 else { return }
        let serial = credentials.leaf.serialNumber
        let first = expiryWarnedSerial.withLockedValue { warned in
            defer { warned = serial }
            return warned != serial
        }
        guard first else { return }
        settings.logger.warning("leaf certificate close to expiry and no renewal has arrived", metadata: [
            "serial": "\(serial)", "not_after": "\(credentials.leaf.notAfter)",
            "seconds_left": "\(Int(credentials.leaf.notAfter.timeIntervalSince(now)))",
        ])
    }

    /// Replaces the intentions: new connections use them at once, and every open inbound
    /// connection they no longer allow is cut, with an audit line naming what revoked it.
    public func updateIntentions(_ set: IntentionSet) {
        intentions.withLockedValue { $0 = set }
        Self.warnUnevaluable(set, logger: settings.logger)
        settings.metrics?.intentionsReloaded()
        let revoked = reauthorize(with: set)
        var event = AuditEvent(kind: .intentionsUpdated, listener: "",
                               reason: "default \(set.defaultAction.rawValue)")
        event.intentions = set.intentions.count
        event.revoked = revoked
        settings.audit.record(event)
        settings.logger.info("intentions updated", metadata: [
            "intentions": "\(set.intentions.count)", "default": "\(set.defaultAction.rawValue)",
            "revoked_connections": "\(revoked)",
        ])
    }

    /// Checks every open inbound tunnel against `set` the way it was joined (a raw tunnel as
    /// L4, a filtered one as L7) and cuts those now denied. Returns how many were cut.
    @discardableResult
    private func reauthorize(with set: IntentionSet) -> Int {
        var revoked = 0
        let own = contexts.credentials.identity
        for entry in registry.entries {
            let decision = set.decide(source: entry.source, destination: entry.destination, destinationNamespace: own.namespace,
                                      destinationPartition: own.partition, l7: entry.joinedAs == .filtered)
            guard !decision.allowed else { continue }
            Revocation.revoke(entry, registry: registry, listener: Self.publicListenerName,
                              reason: "revoked by intentions update: \(decision.reasonText)", audit: settings.audit)
            revoked += 1
        }
        return revoked
    }

    /// Conditions Consul would check and we cannot (a JWT, a sameness group) decide deny; say
    /// so whenever such intentions load, so the refusals they cause are no surprise.
    private static func warnUnevaluable(_ set: IntentionSet, logger: Logger) {
        for condition in set.unevaluableConditions {
            logger.warning("intention condition cannot be evaluated; requests it governs are denied", metadata: [
                "condition": "\(condition)",
            ])
        }
    }

    /// New session-ticket keys now (tests; normally every `TLSContext.sessionLifetimeSeconds`).
    func rotateSessionKeys() throws { try contexts.rotateSessionKeys() }

    /// Swaps in new certificates for every new handshake; open connections keep theirs.
    /// Material that is expired, not yet valid, or whose key does not match was already refused
    /// by `TLSCredentials`; a different trust domain is refused here.
    public func updateCredentials(_ credentials: TLSCredentials) throws {
        let old = contexts.credentials
        guard credentials.trustDomain == old.trustDomain else {
            throw TLSMaterialError("new certificates are for trust domain \(credentials.trustDomain), not \(old.trustDomain)")
        }
        try contexts.replace(with: credentials)
        // Tunnels on inbound mux connections were authenticated with the old material: let
        // them finish, and have new ones arrive on a connection with a fresh handshake.
        retireInboundMuxConnections()
        settings.metrics?.certificateRotated()
        var event = AuditEvent(kind: .certificateRotated, listener: "")
        event.identity = credentials.identity.uri
        event.serial = credentials.leaf.serialNumber
        event.previousSerial = old.leaf.serialNumber
        event.notAfter = credentials.leaf.notAfter
        event.roots = credentials.trustedRoots.count
        settings.audit.record(event)
        settings.logger.notice("certificates rotated", metadata: [
            "old_serial": "\(old.leaf.serialNumber)", "serial": "\(credentials.leaf.serialNumber)",
            "not_after": "\(credentials.leaf.notAfter)", "roots": "\(credentials.trustedRoots.count)",
        ])
    }

    /// GOAWAY on every inbound mux connection (plain connections ignore the event).
    private func retireInboundMuxConnections() {
        for tracked in tracker.channels where tracked.listener == Self.publicListenerName && !tracked.isStream {
            tracked.channel.triggerUserOutboundEvent(MuxGracefulShutdown(), promise: nil)
        }
    }

    /// Pooled mux connections toward destinations and the tunnels on them (tests, admin).
    public func muxPoolCounts() async -> (connections: Int, streams: Int) {
        guard let muxPool else { return (0, 0) }
        return (try? await muxPool.counts(on: group.next()).get()) ?? (0, 0)
    }

    /// The credentials new handshakes use.
    public var currentCredentials: TLSCredentials { contexts.credentials }

    /// Open inbound connections (for tests and the admin API).
    public var openInboundConnections: Int { registry.entries.count }

    /// Bound address of a listener ("public" or "upstream:<name>"), e.g. to learn port 0 picks.
    public func boundAddress(of listener: String) -> SocketAddress? {
        listeners.withLockedValue { $0[listener]?.localAddress }
    }

    /// Graceful shutdown: stop accepting, let in-flight transfers finish (a snapshot stream
    /// may need minutes), and abort whatever is still open at the deadline. Returns the number
    /// of connections that had to be aborted.
    @discardableResult
    public func drain(timeout: TimeAmount) async -> Int {
        draining.withLockedValue { $0 = true }
        // Mux connections first: tunnels must stop arriving on them as soon as the listener
        // stops accepting, not once it has finished closing.
        muxPool?.drain()
        retireInboundMuxConnections()
        await closeListeners()
        // A connection accepted just before the close may still be crossing from the
        // listener's loop to its own (three hops in NIO) before we track it: let every loop
        // run what is queued, so it is counted below instead of outliving the event loops.
        await settleEventLoops()
        settings.logger.notice("draining", metadata: ["open_connections": "\(tracker.total)", "timeout_s": "\(timeout.nanoseconds / 1_000_000_000)"])
        let deadline = NIODeadline.now() + timeout
        // Cancellation (a second signal) ends the wait early: what is left is aborted below.
        while tracker.total > 0 && NIODeadline.now() < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
        }
        // Tunnels are what gets aborted and audited: plain connections and mux streams. A mux
        // connection still carrying streams goes with them, without a line of its own.
        let leftovers = tracker.channels
        let tunnels = leftovers.filter { !$0.isMuxCarrier }
        for tunnel in tunnels {
            var event = AuditEvent(kind: .connectionRevoked, listener: tunnel.listener,
                                   peerAddress: tunnel.channel.remoteAddress.auditDescription,
                                   decision: "deny", reason: "drain timeout reached at shutdown")
            event.muxStream = (tunnel.channel as? MuxStreamIdentifying).map { Int($0.muxStreamID) }
            event.connectionID = tunnel.id
            if let record = tunnel.tunnel {
                // Joined tunnels say who they were; the rest were still in their handshake.
                event.muxConnectionID = record.muxConnectionID
                if record.direction == .inbound { event.source = record.peerIdentity } else { event.destination = record.peerIdentity }
            }
            settings.audit.record(event)
        }
        for tracked in tunnels + leftovers.filter(\.isMuxCarrier) {
            let channel = tracked.channel
            channel.triggerUserOutboundEvent(ConnectionAbortRequest()).whenFailure { _ in ConnectionAbort.abort(channel) }
        }
        // The aborts and the callbacks they queue on other loops finish before we return (the
        // caller shuts the loops down next).
        if !leftovers.isEmpty {
            let loop = group.next()
            let finished = loop.makePromise(of: Void.self)
            EventLoopFuture.andAllComplete(leftovers.map(\.channel.closeFuture), on: loop).cascade(to: finished)
            let bound = loop.scheduleTask(in: .seconds(5)) { finished.succeed() } // never hang an exit on one channel
            try? await finished.futureResult.get()
            bound.cancel()
        }
        await settleEventLoops()
        settings.logger.notice("drained", metadata: ["aborted": "\(tunnels.count)"])
        return tunnels.count
    }

    /// Runs an empty task on every event loop, a few times over: whatever they had queued
    /// (and what that queued on another loop) has run when it returns.
    private func settleEventLoops() async {
        for _ in 0..<3 {
            for loop in group.makeIterator() { try? await loop.submit {}.get() }
        }
    }

    /// True once a drain started: not ready for new work (the admin API's /ready).
    public var isDraining: Bool { draining.withLockedValue { $0 } }

    var currentIntentions: IntentionSet? { intentions.withLockedValue { $0 } }

    /// Every decision before intentions have loaded is a refusal.
    private static func decide(with intentions: NIOLockedValueBox<IntentionSet?>,
                               _ decision: (IntentionSet) -> IntentionDecision) -> IntentionDecision {
        guard let set = intentions.withLockedValue({ $0 }) else {
            return IntentionDecision(allowed: false, reason: .intentionsNotLoaded)
        }
        return decision(set)
    }

    /// Ready for traffic: certificates and intentions loaded, listeners bound, not draining.
    public var readiness: (ready: Bool, reason: String) {
        if isDraining { return (false, "draining") }
        if currentIntentions == nil { return (false, "intentions not loaded") }
        if listeners.withLockedValue({ $0.isEmpty }) { return (false, "no listener bound") }
        if contexts.credentials.expiredLeafReason() != nil { return (false, "leaf certificate expired") }
        return (true, "ready")
    }

    /// Every joined tunnel with its byte counts so far, read on each tunnel's event loop.
    func liveTunnels(on eventLoop: EventLoop) -> EventLoopFuture<[LiveTunnel]> {
        let reads = tracker.channels.compactMap { tracked -> EventLoopFuture<LiveTunnel>? in
            guard let record = tracked.tunnel, let stats = tracked.stats else { return nil }
            return stats.eventLoop.submit {
                LiveTunnel(record: record, bytesFromMesh: stats.value.bytesFromMesh, bytesToMesh: stats.value.bytesToMesh)
            }
        }
        return EventLoopFuture.whenAllComplete(reads, on: eventLoop).map { results in
            results.compactMap { try? $0.get() }.sorted { $0.record.opened < $1.record.opened }
        }
    }

    /// Updates the state gauges (called when /metrics is scraped).
    public func refreshMetrics(on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        guard let metrics = settings.metrics else { return eventLoop.makeSucceededVoidFuture() }
        refreshStateGauges(metrics)
        let inboundStreams = tracker.channels.filter(\.isStream).count
        let pooled = muxPool?.counts(on: eventLoop) ?? eventLoop.makeSucceededFuture((connections: 0, streams: 0))
        return pooled.map { pooled in
            metrics.setGauge(.muxConnectionsActive, Double(pooled.connections), [("side", "upstream")])
            metrics.setGauge(.muxStreamsActive, Double(pooled.streams), [("side", "upstream")])
            metrics.setGauge(.muxStreamsActive, Double(inboundStreams), [("side", "inbound")])
        }
    }

    private func refreshStateGauges(_ metrics: SidecarMetrics) {
        let listenerNames = [Self.publicListenerName] + definition.upstreams.map(\.listenerName)
        for name in listenerNames {
            metrics.setGauge(.connectionsActive, Double(tracker.count(name)), [("listener", name)])
        }
        let leaf = contexts.credentials.leaf
        metrics.setGauge(.leafExpiry, leaf.notAfter.timeIntervalSinceNow)
        metrics.setGauge(.trustedRoots, Double(contexts.credentials.trustedRoots.count))
        for (name, rotation) in upstreamInstances.withLockedValue({ $0 }) {
            metrics.setGauge(.upstreamInstances, Double(rotation.count), [("upstream", name)])
            // Instances tried last for now after failing (outlier ejection).
            metrics.setGauge(.upstreamInstancesEjected, Double(rotation.ejected().count), [("upstream", name)])
        }
        // Upstreams in the registration that got no listener (each logged with its reason).
        metrics.setGauge(.upstreamsSkipped, Double(definition.skippedUpstreams.count))
        metrics.setGauge(.ready, readiness.ready ? 1 : 0)
        // The allocator's view beside RSS: memory in use by live objects versus freed memory
        // glibc keeps for reuse. RSS growing while in-use stays flat is caching, not a leak.
        let heap = mallinfo2()
        metrics.setGauge(.heapInUse, Double(heap.uordblks + heap.hblkhd))
        metrics.setGauge(.heapFreeRetained, Double(heap.fordblks))
    }

    /// Open connections on a listener ("public" or "upstream:<name>").
    public func openConnections(on listener: String) -> Int { tracker.count(listener) }

    private func closeListeners() async {
        // Wait until each timer is really cancelled (a run in flight reschedules itself), so
        // nothing is scheduled on the event loops after the caller shuts them down.
        let pending = timers.withLockedValue { value in
            defer { value.removeAll() }
            return value
        }
        for timer in pending {
            let cancelled = group.next().makePromise(of: Void.self)
            timer.cancel(promise: cancelled)
            try? await cancelled.futureResult.get()
        }
        let channels = listeners.withLockedValue { value in
            defer { value.removeAll() }
            return Array(value.values)
        }
        boundUpstreams.withLockedValue { $0.removeAll() }
        boundPublic.withLockedValue { $0 = nil }
        for channel in channels { try? await channel.close() }
    }

    /// Immediate stop: listeners close; open connections are left to their peers (tests), but
    /// mux connections take no new tunnels.
    public func stop() async {
        muxPool?.drain()
        retireInboundMuxConnections()
        await closeListeners()
    }

    // MARK: - Listeners

    private func serverBootstrap() -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(ChannelOptions.recvAllocator, value: ProxyChannelOptions.receiveAllocator)
            .childChannelOption(ChannelOptions.writeBufferWaterMark, value: ProxyChannelOptions.writeWatermark)
    }

    private func bind(_ bootstrap: ServerBootstrap, host: String, port: Int, what: String) async throws -> Channel {
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            settings.logger.info("listening", metadata: ["listener": "\(what)", "address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
            return channel
        } catch {
            throw SidecarError.bindFailed(listener: what, address: "\(host):\(port)", reason: "\(error)")
        }
    }

    /// Where an accepted connection goes, from the registration in force when it arrives.
    private static func inboundRoute(_ definition: ProxyDefinition, mux: MuxMode) -> InboundRoute {
        InboundRoute(destinationService: definition.destinationServiceName,
                     localHost: definition.localServiceAddress, localPort: definition.localServicePort ?? 0,
                     localSocketPath: definition.localServiceSocketPath,
                     localConnectTimeout: .milliseconds(Int64(definition.config.localConnectTimeoutMs)),
                     maxConnectionLifetime: definition.config.maxConnectionLifetimeNs.map { .nanoseconds($0) },
                     idleTimeout: definition.config.idleTimeoutNs.map { .nanoseconds($0) },
                     proxyProtocol: definition.config.proxyProtocol,
                     l7Protocol: l7Protocol(definition),
                     requestOptions: HTTPRequestOptions(paths: definition.config.pathNormalization,
                                                        underscores: definition.config.underscoreHeaders),
                     // An inbound mux connection left without tunnels closes after idle_timeout too.
                     mux: mux == .prefer ? MuxSettings(maxConcurrentStreams: definition.config.muxMaxStreams,
                                                       idleTimeout: definition.config.idleTimeoutNs.map { .nanoseconds($0) },
                                                       keepaliveInterval: .nanoseconds(definition.config.muxKeepaliveNs)) : nil,
                     maxConnections: definition.config.maxConnections)
    }

    private func bindPublicListener(host: String, port: Int) async throws -> Channel {
        let contexts = self.contexts, intentions = self.intentions, registry = self.registry
        let tracker = self.tracker, definitionBox = self.definitionBox, draining = self.draining
        let audit = settings.audit, logger = settings.logger
        let muxMode = settings.mux
        // `l7` is how the connection is (to be) joined, not the protocol in force now: a tunnel
        // joined raw must be decided as raw even if the service became http meanwhile.
        // The destination's namespace and partition are those of our own leaf.
        let authorize: @Sendable (SPIFFEID, String, Bool) -> IntentionDecision = { source, destination, l7 in
            let own = contexts.credentials.identity
            return Self.decide(with: intentions) {
                $0.decide(source: source, destination: destination, destinationNamespace: own.namespace,
                          destinationPartition: own.partition, l7: l7)
            }
        }
        let authorizeRequest: @Sendable (HTTPRequestFacts, SPIFFEID, String) -> IntentionDecision = { request, source, destination in
            let own = contexts.credentials.identity
            return Self.decide(with: intentions) {
                $0.decide(request: request, source: source, destination: destination, destinationNamespace: own.namespace,
                          destinationPartition: own.partition)
            }
        }
        let evictions = HandshakeEvictionReport(audit: audit, logger: logger, metrics: settings.metrics)
        let bootstrap = serverBootstrap().childChannelInitializer { channel in
            let definition = definitionBox.withLockedValue { $0 }
            let connectionID = ConnectionID.next()
            if let evicted = tracker.trackHandshaking(channel, listener: Self.publicListenerName, connectionID: connectionID) {
                evicted.close(promise: nil)
                evictions.evicted(listener: Self.publicListenerName, budget: definition.config.maxPendingHandshakes,
                                  on: channel.eventLoop)
            }
            let server = contexts.server
            // Never present an expired leaf: refuse the handshake instead (and say why).
            if let expired = server.credentials.expiredLeafReason() {
                var event = AuditEvent(kind: .handshakeRejected, listener: Self.publicListenerName,
                                       peerAddress: channel.remoteAddress.auditDescription, decision: "deny",
                                       reason: expired + "; refusing to present it")
                event.connectionID = connectionID
                audit.record(event)
                logger.error("leaf certificate expired and not renewed: refusing handshakes")
                return channel.close()
            }
            // Read per connection and, on a mux connection, per stream: a retarget applies to
            // the next tunnel, whichever connection it arrives on.
            let route = {
                var route = Self.inboundRoute(definitionBox.withLockedValue { $0 }, mux: muxMode)
                route.draining = draining.withLockedValue { $0 }
                return route
            }
            let timeouts = TLSHandlerConfiguration(handshakeTimeout: .milliseconds(Int64(definition.config.handshakeTimeoutMs)),
                                                   firstByteTimeout: .milliseconds(Int64(definition.config.firstByteTimeoutMs)))
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandlers(
                    HandshakeProgressHandler(tracker: tracker),
                    TLSHandler(context: server, configuration: timeouts),
                    InboundConnectionHandler(listenerName: Self.publicListenerName, connectionID: connectionID, route: route,
                                             authorize: authorize, authorizeRequest: authorizeRequest,
                                             registry: registry, tracker: tracker, audit: audit, logger: logger)
                )
            }
        }
        let definition = definitionBox.withLockedValue { $0 }
        tracker.configure(Self.publicListenerName, maxConnections: definition.config.maxConnections,
                          handshakeBudget: definition.config.maxPendingHandshakes)
        return try await bind(bootstrap, host: host, port: port, what: Self.publicListenerName)
    }

    private func bindUpstreamListener(_ upstream: Upstream) async throws -> Channel {
        let expected = SPIFFEID(trustDomain: contexts.credentials.trustDomain, partition: upstream.destinationPartition,
                                namespace: upstream.destinationNamespace,
                                datacenter: upstream.datacenter ?? settings.datacenter, service: upstream.destinationName)
        let contexts = self.contexts
        let rotation = instances(of: upstream.instanceKey)
        let config = definition.config
        let route = UpstreamRoute(upstream: upstream, expectedIdentity: expected,
                                  endpoints: rotation,
                                  tlsContext: { contexts.client },
                                  handshakeTimeout: .milliseconds(Int64(config.handshakeTimeoutMs)),
                                  idleTimeout: config.idleTimeoutNs.map { .nanoseconds($0) },
                                  callers: try CallerPolicy.resolve(users: upstream.allowedUsers, groups: upstream.allowedGroups),
                                  muxPool: muxPool)
        if rotation.count == 0 && settings.consulDiscovery == false {
            settings.logger.warning("upstream has no known instance; connections to it will fail", metadata: [
                "upstream": "\(upstream.destinationName)",
            ])
        }
        let audit = settings.audit, logger = settings.logger
        let tracker = self.tracker, definitionBox = self.definitionBox
        let listenerName = upstream.listenerName
        tracker.configure(listenerName, maxConnections: config.maxConnections)
        let bootstrap = serverBootstrap().childChannelInitializer { channel in
            // Timeouts as the registration says now, not as it said when the listener was bound.
            var route = route
            let config = definitionBox.withLockedValue { $0.config }
            route.handshakeTimeout = .milliseconds(Int64(config.handshakeTimeoutMs))
            route.idleTimeout = config.idleTimeoutNs.map { .nanoseconds($0) }
            let connectionID = ConnectionID.next()
            tracker.trackTunnel(channel, listener: listenerName, connectionID: connectionID)
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandlers(
                    OrderedHalfCloseHandler(),
                    UpstreamConnectionHandler(route: route, connectionID: connectionID, tracker: tracker,
                                              audit: audit, logger: logger))
            }
        }
        guard let socketPath = upstream.localBindSocketPath else {
            return try await bind(bootstrap, host: upstream.localBindAddress, port: upstream.localBindPort, what: listenerName)
        }
        return try await bindUnixSocket(bootstrap, path: socketPath, mode: upstream.localBindSocketMode, what: listenerName)
    }

    /// Binds a unix socket: a stale socket file left by a crashed sidecar is replaced, but a
    /// live one (someone answers) or a file that is not a socket is an error. The file gets
    /// `mode` (0600 when unset: owner only) and is removed when the listener closes.
    private func bindUnixSocket(_ bootstrap: ServerBootstrap, path: String, mode: UInt16?, what: String) async throws -> Channel {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw SidecarError.socketPathInUse("\(path) exists and is not a socket; refusing to replace it")
            }
            if (try? await ClientBootstrap(group: group).connect(unixDomainSocketPath: path).get())?.close(promise: nil) != nil {
                throw SidecarError.socketPathInUse("\(path) is in use by another process")
            }
            unlink(path)
        }
        // Bind inside a private directory, set the mode, then rename into place: the socket
        // is never reachable at `path` with anything but its final permissions.
        let parent = (path as NSString).deletingLastPathComponent
        var template = Array("\(parent)/.backup-sidecar-XXXXXX".utf8CString)
        guard let privateDirectory = mkdtemp(&template).map({ String(cString: $0) }) else {
            throw SidecarError.bindFailed(listener: what, address: path, reason: "cannot create a private directory in \(parent)")
        }
        defer { rmdir(privateDirectory) }
        let staging = "\(privateDirectory)/socket"
        let channel: Channel
        do {
            channel = try await bootstrap.bind(unixDomainSocketPath: staging).get()
        } catch {
            throw SidecarError.bindFailed(listener: what, address: path, reason: "\(error)")
        }
        chmod(staging, mode_t(mode ?? 0o600))
        guard rename(staging, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(staging)
            try? await channel.close()
            throw SidecarError.bindFailed(listener: what, address: path, reason: reason)
        }
        channel.closeFuture.whenComplete { _ in unlink(path) }
        settings.logger.info("listening", metadata: ["listener": "\(what)", "address": "unix:\(path)",
                                                     "mode": "\(String(mode ?? 0o600, radix: 8))"])
        return channel
    }
}

/// Connections closed in their handshake to make room (a full `max_pending_handshakes`):
/// counted each, audited as one line per second at most, so a flood cannot flood the log.
final class HandshakeEvictionReport: Sendable {
    private let audit: any AuditSink
    private let logger: Logger
    private let metrics: SidecarMetrics?
    /// Evictions not yet audited, and whether a line is scheduled for them.
    private let state = NIOLockedValueBox<(unreported: Int, scheduled: Bool)>((0, false))

    init(audit: any AuditSink, logger: Logger, metrics: SidecarMetrics?) {
        self.audit = audit
        self.logger = logger
        self.metrics = metrics
    }

    func evicted(listener: String, budget: Int, on eventLoop: EventLoop) {
        metrics?.handshakeEvicted(listener: listener)
        let schedule = state.withLockedValue { state -> Bool in
            state.unreported += 1
            defer { state.scheduled = true }
            return !state.scheduled
        }
        guard schedule else { return }
        // The first one is reported within a second, with all that follow it meanwhile.
        eventLoop.scheduleTask(in: .seconds(1)) { [self] in
            let count = state.withLockedValue { state -> Int in
                defer { state = (0, false) }
                return state.unreported
            }
            let reason = "\(count) connection(s) closed in their handshake to make room: more than \(budget) handshakes pending (max_pending_handshakes)"
            audit.record(AuditEvent(kind: .handshakeRejected, listener: listener, decision: "deny", reason: reason))
            logger.warning("handshake budget full: oldest handshakes closed", metadata: ["listener": "\(listener)", "closed": "\(count)"])
        }
    }
}

public enum SidecarError: Error, CustomStringConvertible {
    case bindFailed(listener: String, address: String, reason: String)
    case unknownAccount(String)
    case socketPathInUse(String)
    case reconfigurationFailed([String])

    public var description: String {
        switch self {
        case .bindFailed(let listener, let address, let reason): return "cannot bind \(listener) listener on \(address): \(reason)"
        case .unknownAccount(let what): return "allowed_uids/allowed_gids: no such \(what)"
        case .socketPathInUse(let detail): return detail
        case .reconfigurationFailed(let failures): return "reconfiguration incomplete: " + failures.joined(separator: "; ")
        }
    }
}
