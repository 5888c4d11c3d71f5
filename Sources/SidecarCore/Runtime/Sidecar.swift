import Dispatch
import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarMux
import SidecarTLS
import SidecarModel

/// One running sidecar: the public (inbound) listener and one listener per upstream. This is
/// the orchestrator: start, apply a changed registration, update intentions or credentials,
/// drain, stop. Connections are served by the listeners (`PublicListener`,
/// `UpstreamListener`), each working from one snapshot of the settings in force.
package final class Sidecar: Sendable {
    let settings: SidecarSettings
    let group: EventLoopGroup
    let contexts: TLSContextStore
    let authorizer: Authorizer
    let table = ConnectionTable()
    /// What every public-listener connection shares (outlives a rebind).
    let inbound: InboundListenerContext
    /// Upstream side of the mux; nil when it is off.
    let connector: UpstreamConnector
    var muxPool: MuxPool? { connector.pool }

    struct State {
        /// The registration in force. Replaced by `apply(_:)`.
        var definition: ProxyDefinition
        var publicListener: PublicListener?
        var upstreamListeners: [String: UpstreamListener] = [:]
        /// Instances per destination (`Upstream.instanceKey`), kept across listener rebinds:
        /// they belong to the destination, not to the listener.
        var instances: [String: EndpointRotation] = [:]
        var draining = false
        var timers: [RepeatedTask] = []
        /// The leaf already warned about (once per certificate).
        var expiryWarnedSerial: String?
    }

    let state: NIOLockedValueBox<State>

    static let publicListenerName = "public"

    package init(settings: SidecarSettings, group: EventLoopGroup) throws {
        try settings.definition.validateUpstreamBinds(allowNonLoopback: settings.allowNonLoopbackUpstreams)
        var settings = settings
        if let metrics = settings.metrics { settings.audit = AuditFanOut([settings.audit, metrics]) }
        self.settings = settings
        self.group = group
        contexts = try TLSContextStore(credentials: settings.credentials,
                                       applicationProtocols: UpstreamConnector.applicationProtocols(settings.mux))
        connector = UpstreamConnector(mode: settings.mux, settings: Self.upstreamMuxSettings(settings.definition.config),
                                      audit: settings.audit, logger: settings.logger)
        authorizer = Authorizer(intentions: settings.intentions, contexts: contexts)
        inbound = InboundListenerContext(route: InboundRoute(settings.definition, mux: settings.mux), contexts: contexts,
                                         authorizer: authorizer, table: table, audit: settings.audit,
                                         logger: settings.logger,
                                         evictions: HandshakeEvictionReport(audit: settings.audit, logger: settings.logger,
                                                                            metrics: settings.metrics))
        state = NIOLockedValueBox(State(definition: settings.definition))
        if let intentions = settings.intentions { Authorizer.warnUnevaluable(intentions, logger: settings.logger) }
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
    package var definition: ProxyDefinition { state.withLockedValue { $0.definition } }

    /// True once a drain started: not ready for new work (the admin API's /ready).
    var isDraining: Bool { state.withLockedValue { $0.draining } }

    /// Binds every listener. Throws (naming the address) if any cannot be bound.
    package func start() async throws {
        let definition = self.definition
        reportSkippedUpstreams(definition.skippedUpstreams)
        try await reconcilePublicListener(definition)
        for upstream in definition.upstreams {
            try await bindUpstream(upstream, config: definition.config)
        }
        let expiryCheck = group.next().scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(30)) { [weak self] _ in
            self?.warnIfExpiring()
        }
        // Resumable sessions live in the SSL_CTX: replacing the contexts (off the event loop)
        // bounds how long any session can be resumed.
        let ticketLifetime = TimeAmount.seconds(Int64(TLSContext.sessionLifetimeSeconds))
        let contexts = self.contexts, logger = settings.logger
        let keyRotation = group.next().scheduleRepeatedTask(initialDelay: ticketLifetime, delay: ticketLifetime) { _ in
            DispatchQueue.global().async {
                do { try contexts.rotateSessionKeys() } catch {
                    logger.error("session cache renewal failed", metadata: ["error": "\(error)"])
                }
            }
        }
        state.withLockedValue { $0.timers = [expiryCheck, keyRotation] }
    }

    /// Applies a changed registration live (Consul mode): upstream listeners that appeared are
    /// bound, those that disappeared are closed, changed ones are rebound; the public listener
    /// is rebound only if its address moved. Live tunnels are never touched: a closed
    /// listener's accepted connections run on. Everything else (local target, timeouts,
    /// limits, protocol, mux settings) takes effect for the next connection or stream; an
    /// inbound mux connection whose every new stream the change would deny is retired (its
    /// running streams finish). Throws if a listener cannot be bound (the rest applied).
    package func apply(_ newDefinition: ProxyDefinition) async throws {
        try newDefinition.validateUpstreamBinds(allowNonLoopback: settings.allowNonLoopbackUpstreams)
        let (old, draining) = state.withLockedValue { state in
            defer { state.definition = newDefinition }
            return (state.definition, state.draining)
        }
        guard !draining else { return }
        if newDefinition.skippedUpstreams != old.skippedUpstreams { reportSkippedUpstreams(newDefinition.skippedUpstreams) }
        inbound.replace(with: InboundRoute(newDefinition, mux: settings.mux))
        retireDeniedCarriers(because: "denied after a registration change")
        muxPool?.update(Self.upstreamMuxSettings(newDefinition.config))
        var failures: [String] = []
        do { try await reconcilePublicListener(newDefinition) } catch { failures.append("\(error)") }
        let wanted = Dictionary(newDefinition.upstreams.map { ($0.listenerName, $0) }, uniquingKeysWith: { first, _ in first })
        for (name, listener) in state.withLockedValue({ $0.upstreamListeners }) {
            if wanted[name] == listener.upstream {
                listener.update(newDefinition.config)
                continue
            }
            await closeUpstreamListener(name)
            settings.logger.notice("upstream listener closed", metadata: ["listener": "\(name)", "address": "\(listener.upstream.listenerKey)"])
        }
        for upstream in newDefinition.upstreams where state.withLockedValue({ $0.upstreamListeners[upstream.listenerName] }) == nil {
            do { try await bindUpstream(upstream, config: newDefinition.config) } catch { failures.append("\(error)") }
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

    /// One warning per upstream of the registration that gets no listener, with why.
    private func reportSkippedUpstreams(_ skipped: [String]) {
        for line in skipped { settings.logger.warning("upstream skipped", metadata: ["reason": "\(line)"]) }
    }

    /// Replaces the known instances of an upstream destination (Consul's health/connect),
    /// keyed by `Upstream.instanceKey`.
    package func updateInstances(_ endpoints: [Endpoint], for destination: String) {
        instances(of: destination).replace(endpoints)
    }

    /// An upstream destination's instances and their ejections, if it has any (tests).
    func existingInstances(of destination: String) -> EndpointRotation? {
        state.withLockedValue { $0.instances[destination] }
    }

    private func instances(of destination: String) -> EndpointRotation {
        state.withLockedValue { state in
            if let existing = state.instances[destination] { return existing }
            let created = EndpointRotation([])
            state.instances[destination] = created
            return created
        }
    }

    // MARK: Listeners

    /// Binds, moves or closes the public listener to match `definition`.
    private func reconcilePublicListener(_ definition: ProxyDefinition) async throws {
        let address = definition.publicListenerAddress
        let bound = state.withLockedValue { $0.publicListener }
        guard address != bound?.address else { return }
        if let bound {
            // Gone from `boundAddress(of:)` only once its port is closed.
            await bound.close()
            state.withLockedValue { if $0.publicListener === bound { $0.publicListener = nil } }
        }
        guard let port = definition.publicBindPort, address != nil else {
            settings.logger.notice("no public listener: the registration has no port or no local_service_port", metadata: [
                "service": "\(definition.name)",
            ])
            return
        }
        let listener = try await PublicListener.bind(host: definition.publicBindAddress, port: port, shared: inbound, group: group)
        state.withLockedValue { $0.publicListener = listener }
    }

    private func bindUpstream(_ upstream: Upstream, config: ProxyConfig) async throws {
        let expected = SPIFFEID(trustDomain: contexts.credentials.trustDomain, partition: upstream.destinationPartition,
                                namespace: upstream.destinationNamespace,
                                datacenter: upstream.datacenter ?? settings.datacenter, service: upstream.destinationName)
        let contexts = self.contexts
        let rotation = instances(of: upstream.instanceKey)
        let route = UpstreamRoute(upstream: upstream, expectedIdentity: expected, endpoints: rotation,
                                  tlsContext: { contexts.client },
                                  handshakeTimeout: .milliseconds(Int64(config.handshakeTimeoutMs)),
                                  idleTimeout: config.idleTimeoutNs.map { .nanoseconds($0) },
                                  callers: try CallerPolicy.resolve(users: upstream.allowedUsers, groups: upstream.allowedGroups),
                                  connector: connector)
        if rotation.count == 0 && settings.consulDiscovery == false {
            settings.logger.warning("upstream has no known instance; connections to it will fail", metadata: [
                "upstream": "\(upstream.destinationName)",
            ])
        }
        let listener = try await UpstreamListener.bind(upstream, route: route, maxConnections: config.maxConnections, table: table,
                                                       audit: settings.audit, logger: settings.logger, group: group)
        state.withLockedValue { $0.upstreamListeners[upstream.listenerName] = listener }
    }

    /// Closes an upstream listener; it disappears from `boundAddress(of:)` only once its port
    /// is closed.
    private func closeUpstreamListener(_ name: String) async {
        guard let listener = state.withLockedValue({ $0.upstreamListeners[name] }) else { return }
        await listener.close()
        state.withLockedValue { if $0.upstreamListeners[name] === listener { $0.upstreamListeners[name] = nil } }
    }

    /// Bound address of a listener ("public" or "upstream:<name>"), e.g. to learn port 0 picks.
    func boundAddress(of listener: String) -> SocketAddress? {
        state.withLockedValue { state in
            listener == Self.publicListenerName ? state.publicListener?.localAddress
                : state.upstreamListeners[listener]?.channel.localAddress
        }
    }

    // MARK: Policy and credentials

    /// Replaces the intentions: new connections use them at once, and every open inbound
    /// connection they no longer allow is cut, with an audit line naming what revoked it.
    package func updateIntentions(_ set: IntentionSet) {
        authorizer.replace(with: set)
        Authorizer.warnUnevaluable(set, logger: settings.logger)
        settings.metrics?.intentionsReloaded()
        let revoked = reauthorize(with: set)
        let retired = retireDeniedCarriers(with: set, because: "denied by intentions update")
        var event = AuditEvent(kind: .intentionsUpdated, listener: "", reason: "default \(set.defaultAction.rawValue)")
        event.intentions = set.intentions.count
        event.revoked = revoked
        settings.audit.record(event)
        settings.logger.info("intentions updated", metadata: [
            "intentions": "\(set.intentions.count)", "default": "\(set.defaultAction.rawValue)",
            "revoked_connections": "\(revoked)", "retired_mux_connections": "\(retired)",
        ])
    }

    /// Retires (GOAWAY) every inbound mux connection whose source may no longer open a stream
    /// (under `set`, or the intentions in force), decided as a new stream would be: after an
    /// intentions update, whose `reauthorize` re-checked the running streams, and after a
    /// registration change (a protocol or destination that every new stream would be denied).
    /// Without this the connection would stay open, idle, counting toward max_connections,
    /// until its idle timeout. Returns how many were retired.
    @discardableResult
    private func retireDeniedCarriers(with set: IntentionSet? = nil, because cause: String) -> Int {
        let route = inbound.route
        var retired = 0
        for entry in table.carriers {
            guard let source = entry.carrier?.source else { continue }
            let decision = authorizer.decide(source: source, destination: route.destinationService, l7: route.l7, with: set)
            guard !decision.allowed, let carrier = table.claimCarrierForRetirement(entry.channel) else { continue }
            carrier.retire("\(cause): \(decision.reasonText)")
            retired += 1
        }
        return retired
    }

    /// Checks every open inbound tunnel against `set` the way it was joined (a raw tunnel as
    /// L4, a filtered one as L7) and cuts those now denied. Returns how many were cut.
    private func reauthorize(with set: IntentionSet) -> Int {
        var revoked = 0
        for entry in table.inboundTunnels {
            guard let authorization = entry.inbound else { continue }
            let decision = authorizer.decide(source: authorization.source, destination: authorization.destination,
                                             l7: authorization.joinedAs == .filtered, with: set)
            guard !decision.allowed else { continue }
            if Revocation.revoke(entry.channel, table: table, listener: Self.publicListenerName,
                                 reason: "revoked by intentions update: \(decision.reasonText)", audit: settings.audit) {
                revoked += 1
            }
        }
        return revoked
    }

    /// A new, empty session cache now (tests; normally every `TLSContext.sessionLifetimeSeconds`).
    func rotateSessionKeys() throws { try contexts.rotateSessionKeys() }

    /// Swaps in new certificates for every new handshake; open connections keep theirs.
    /// Material that is expired, not yet valid, or whose key does not match was already refused
    /// by `TLSCredentials`; a different trust domain is refused here.
    package func updateCredentials(_ credentials: TLSCredentials) throws {
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
        for tracked in table.channels where tracked.listener == Self.publicListenerName && !tracked.isStream {
            tracked.channel.triggerUserOutboundEvent(MuxGracefulShutdown(), promise: nil)
        }
    }

    // MARK: Shutdown

    /// Graceful shutdown: stop accepting, let in-flight transfers finish (a snapshot stream
    /// may need minutes), and abort whatever is still open at the deadline. Returns the number
    /// of connections that had to be aborted.
    @discardableResult
    package func drain(timeout: TimeAmount) async -> Int {
        state.withLockedValue { $0.draining = true }
        inbound.beginDraining()
        // Mux connections first: tunnels must stop arriving on them as soon as the listener
        // stops accepting, not once it has finished closing.
        muxPool?.drain()
        retireInboundMuxConnections()
        await closeListeners()
        return await ShutdownDrain(table: table, group: group, audit: settings.audit, logger: settings.logger)
            .run(timeout: timeout)
    }

    /// Immediate stop: listeners close; open connections are left to their peers (tests), but
    /// mux connections take no new tunnels.
    package func stop() async {
        muxPool?.drain()
        retireInboundMuxConnections()
        await closeListeners()
    }

    private func closeListeners() async {
        // Wait until each timer is really cancelled (a run in flight reschedules itself), so
        // nothing is scheduled on the event loops after the caller shuts them down.
        let (timers, publicListener, upstreams) = state.withLockedValue { state in
            defer {
                state.timers.removeAll()
                state.publicListener = nil
                state.upstreamListeners.removeAll()
            }
            return (state.timers, state.publicListener, Array(state.upstreamListeners.values))
        }
        for timer in timers {
            let cancelled = group.next().makePromise(of: Void.self)
            timer.cancel(promise: cancelled)
            try? await cancelled.futureResult.get()
        }
        await publicListener?.close()
        for listener in upstreams { await listener.close() }
    }
}
