import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarCore
import SidecarTLS
import SidecarModel

/// What to run as, and how patient to be.
package struct ConsulProxyOptions: Sendable {
    package enum Target: Sendable, Equatable {
        /// `-sidecar-for SERVICE_ID`: the connect-proxy registered as that service's sidecar.
        case sidecarFor(String)
        /// `-proxy-id ID`: that connect-proxy registration.
        case proxyID(String)
    }

    var target: Target
    /// The decision when no intention matches and the agent reports no DefaultIntentionPolicy.
    package var defaultIntention: IntentionAction = .deny
    var timing = WatchTiming()
    /// How long to wait for the registration, leaf and roots before giving up at startup.
    package var startupTimeout: TimeAmount = .seconds(60)
    /// Operator overrides applied to every registration read (e.g. --max-connections).
    package var adjustDefinition: @Sendable (ProxyDefinition) -> ProxyDefinition = { $0 }
    package var allowNonLoopbackUpstreams = false
    package var mux = MuxMode.prefer

    package init(target: Target) {
        self.target = target
    }
}

struct ConsulProxyError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A native Consul Connect proxy: configured by its registration, certificates from the
/// agent's CA, intentions and upstream instances from blocking watches. Every answer is
/// applied live to one `Sidecar`; an unusable answer or an unreachable agent leaves the last
/// good state serving (fail static).
package final class ConsulProxy: Sendable {
    private let client: ConsulClient
    private let options: ConsulProxyOptions
    private let audit: any AuditSink
    private let metrics: SidecarMetrics?
    private let logger: Logger
    private let group: any EventLoopGroup
    private let material = NIOLockedValueBox<(leaf: ConsulLeafCertificate?, roots: ConsulCARoots?)>((nil, nil))
    private let watches = NIOLockedValueBox<[String: Task<Void, Never>]>([:])

    package init(client: ConsulClient, options: ConsulProxyOptions, audit: any AuditSink, metrics: SidecarMetrics?,
                logger: Logger, group: any EventLoopGroup) {
        self.client = client
        self.options = options
        self.audit = audit
        self.metrics = metrics
        self.logger = logger
        self.group = group
    }

    /// Resolves the registration, waits for leaf and roots, binds every listener and starts
    /// the watches. Throws when the agent never delivered within the startup timeout, or when
    /// the registration names a sidecar that does not exist (after retrying).
    package func start() async throws -> Sidecar {
        let deadline = NIODeadline.now() + options.startupTimeout
        let proxyID = try await retrying("find the proxy registration", until: deadline) { try await self.resolveProxyID() }
        let registration = try await retrying("read the proxy registration", until: deadline) {
            try await self.readRegistration(proxyID)
        }
        let service = registration.proxy.destinationServiceName
        // Consul Enterprise: the leaf and intentions of the namespace and partition we are
        // registered in (CE states none, and refuses the parameters).
        let tenancyQuery = registration.proxy.tenancy?.queryItems ?? []
        let leafPath = "/v1/agent/connect/ca/leaf/\(ConsulClient.segment(service))"
        // Loaded as one step and retried as one: a leaf that expired before we could load it
        // (the agent renews it late, or we were stalled) is fetched again, not fatal.
        let (leaf, roots, credentials) = try await retrying("load the leaf certificate and CA roots", until: deadline) {
            let leaf = try ConsulLeafCertificate.decode(try await self.client.get(leafPath, query: tenancyQuery).body, source: leafPath)
            let roots = try ConsulCARoots.decode(try await self.client.get("/v1/agent/connect/ca/roots").body,
                                                 source: "/v1/agent/connect/ca/roots")
            return (leaf, roots, try Self.credentials(leaf: leaf, roots: roots))
        }
        let agent = await readAgentSelf()
        let datacenter = try Self.datacenter(registration: registration, leaf: leaf, agent: agent)
        material.withLockedValue { $0 = (leaf, roots) }
        var settings = SidecarSettings(definition: options.adjustDefinition(registration.proxy), credentials: credentials,
                                       intentions: nil, datacenter: datacenter, audit: audit, logger: logger,
                                       metrics: metrics)
        settings.allowNonLoopbackUpstreams = options.allowNonLoopbackUpstreams
        settings.mux = options.mux
        settings.consulDiscovery = true
        let sidecar = try Sidecar(settings: settings, group: group)
        try await sidecar.start()
        let defaultAction = DefaultIntention(agentPolicy: agent?.defaultIntentionPolicy, fallback: options.defaultIntention)
        logger.notice("Consul proxy started", metadata: [
            "proxy_id": "\(proxyID)", "service": "\(service)", "datacenter": "\(datacenter)",
            "serial": "\(leaf.serialNumber)", "agent": "\(client.summary)",
        ])
        startWatches(sidecar: sidecar, proxyID: proxyID, service: service, tenancyQuery: tenancyQuery, defaultAction: defaultAction)
        reconcileInstanceWatches(sidecar: sidecar, definition: sidecar.definition)
        return sidecar
    }

    /// Stops every watch and releases the HTTP client (the sidecar keeps serving what it has).
    /// Call it also when `start()` failed.
    package func stop() async {
        let tasks = watches.withLockedValue { value in
            defer { value.removeAll() }
            return Array(value.values)
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        await client.shutdown()
    }

    // MARK: - Startup

    /// `/v1/agent/self` needs `agent:read`, which a service identity (what `acl login` and
    /// `-bind-type service` give) does not have: it is read once, for the agent's
    /// DefaultIntentionPolicy, and not needed.
    private func readAgentSelf() async -> ConsulAgentSelf? {
        do {
            return try ConsulAgentSelf.decode(try await client.get("/v1/agent/self").body, source: "/v1/agent/self")
        } catch {
            logger.notice("/v1/agent/self not read (it needs agent:read); the default intention comes from X-Consul-Default-ACL-Policy",
                          metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// The datacenter of our SPIFFE IDs: the registration's, else the leaf's ServiceURI, else
    /// the agent's own.
    static func datacenter(registration: ConsulAgentService, leaf: ConsulLeafCertificate, agent: ConsulAgentSelf?) throws -> String {
        if let datacenter = registration.datacenter { return datacenter }
        if let uri = try? SPIFFEID.parse(leaf.serviceURI), !uri.datacenter.isEmpty { return uri.datacenter }
        if let agent { return agent.datacenter }
        throw ConsulProxyError("no datacenter: the registration has no Datacenter, the leaf's ServiceURI \"\(leaf.serviceURI)\" names none, and /v1/agent/self is not readable")
    }

    private func resolveProxyID() async throws -> String {
        switch options.target {
        case .proxyID(let id):
            return id
        case .sidecarFor(let serviceID):
            let body = try await client.get("/v1/agent/services").body
            let candidates = try Self.sidecarProxyIDs(in: body, for: serviceID)
            guard let first = candidates.first else {
                throw ConsulProxyError("no sidecar proxy registered for service \"\(serviceID)\"")
            }
            guard candidates.count == 1 else {
                throw ConsulProxyError("more than one sidecar proxy registered for \"\(serviceID)\"; start with -proxy-id and one of: \(candidates.joined(separator: ", "))")
            }
            return first
        }
    }

    /// IDs of connect-proxy registrations whose DestinationServiceID is `serviceID`, compared
    /// without regard to case (as `consul connect proxy -sidecar-for`).
    static func sidecarProxyIDs(in body: Data, for serviceID: String) throws -> [String] {
        guard let services = JSONValue.parsed(body)?.objectValue else {
            throw ConsulProxyError("/v1/agent/services: expected a JSON object")
        }
        return services.compactMap { id, service -> String? in
            guard service["Kind"]?.stringValue == "connect-proxy",
                  service["Proxy"]?["DestinationServiceID"]?.stringValue?.lowercased() == serviceID.lowercased()
            else { return nil }
            return id
        }.sorted()
    }

    private func readRegistration(_ proxyID: String) async throws -> ConsulAgentService {
        let path = "/v1/agent/service/\(ConsulClient.segment(proxyID))"
        return try ConsulAgentService.decode(try await client.get(path).body, source: path)
    }

    private func retrying<T: Sendable>(_ what: String, until deadline: NIODeadline,
                                       _ attempt: @Sendable () async throws -> T) async throws -> T {
        var backoff = RetryBackoff(base: 0.2, cap: 5)
        while true {
            do {
                return try await attempt()
            } catch {
                guard NIODeadline.now() < deadline, !Task.isCancelled else {
                    throw ConsulProxyError("could not \(what) from the Consul agent at \(client.summary): \(error)")
                }
                logger.warning("waiting for the Consul agent", metadata: ["step": "\(what)", "error": "\(error)"])
                try? await Task.sleep(for: .seconds(backoff.nextDelay(randomUnit: Double.random(in: 0...1))))
            }
        }
    }

    // MARK: - Watches

    private func startWatches(sidecar: Sidecar, proxyID: String, service: String, tenancyQuery: [(String, String)],
                              defaultAction: DefaultIntention) {
        let adjust = options.adjustDefinition
        watch("service", path: "/v1/agent/service/\(ConsulClient.segment(proxyID))", mode: .contentHash,
              decode: { try ConsulAgentService.decode($0, source: $1) }) { [self] registration in
            let definition = adjust(registration.proxy)
            guard definition != sidecar.definition else { return }
            do {
                try await sidecar.apply(definition)
                logger.notice("registration change applied", metadata: ["proxy_id": "\(proxyID)"])
            } catch {
                logger.error("registration change only partly applied", metadata: ["error": "\(error)"])
            }
            reconcileInstanceWatches(sidecar: sidecar, definition: sidecar.definition)
        }
        watch("leaf", path: "/v1/agent/connect/ca/leaf/\(ConsulClient.segment(service))", query: tenancyQuery,
              decode: { try ConsulLeafCertificate.decode($0, source: $1) }) { [self] leaf in
            install(sidecar: sidecar, leaf: leaf, roots: nil)
        }
        watch("roots", path: "/v1/agent/connect/ca/roots", decode: { try ConsulCARoots.decode($0, source: $1) }) { [self] roots in
            install(sidecar: sidecar, leaf: nil, roots: roots)
        }
        let log = self.logger
        watch("intentions", path: "/v1/connect/intentions/match", query: [("by", "destination"), ("name", service)] + tenancyQuery,
              decodeResponse: { response, source in
                  (try ConsulIntentionMatch.decode(response.body, source: source, destination: service), response.defaultACLPolicy)
              }) { intentions, aclPolicy in
            let (action, changed) = defaultAction.update(aclPolicy: aclPolicy)
            if changed {
                log.notice("default intention", metadata: ["action": "\(action.rawValue)", "from": "\(defaultAction.source)"])
            }
            sidecar.updateIntentions(IntentionSet(intentions, defaultAction: action))
        }
    }

    /// Starts one blocking watch under `key` (also its name in logs and metrics); answers that
    /// decode are handed to `apply`, others are logged and counted by the watch.
    private func watch<Value: Sendable>(_ key: String, name: String? = nil, path: String, query: [(String, String)] = [],
                                        mode: BlockingWatch<Value>.Mode = .index,
                                        decode: @escaping @Sendable (Data, String) throws -> Value,
                                        apply: @escaping @Sendable (Value) async -> Void) {
        watch(key, name: name, path: path, query: query, mode: mode, decodeResponse: { try decode($0.body, $1) }, apply: apply)
    }

    private func watch<Value: Sendable>(_ key: String, name: String? = nil, path: String, query: [(String, String)] = [],
                                        mode: BlockingWatch<Value>.Mode = .index,
                                        decodeResponse: @escaping @Sendable (ConsulResponse, String) throws -> Value,
                                        apply: @escaping @Sendable (Value) async -> Void) {
        let watch = BlockingWatch(name: name ?? key, path: path, query: query, mode: mode, client: client, timing: options.timing,
                                  logger: logger, metrics: metrics) { response in
            try decodeResponse(response, path)
        }
        launch(key) { await watch.run(onChange: apply) }
    }

    /// Applies a new leaf or new roots: the credentials are rebuilt from the newest of both. A
    /// combination that does not load (key mismatch, expired, trust domain change) is refused
    /// and the sidecar keeps what it has.
    ///
    /// The whole of it runs under the material's lock: the leaf and roots watches run side by
    /// side, and during a CA rotation they answer together. Built outside the lock, the pair
    /// read first could be swapped in last, putting an older leaf back in force (seen under
    /// load: new connections alternating between two serials, and mux connections retired
    /// over and over). Building takes milliseconds, and only watch tasks wait for it.
    private func install(sidecar: Sidecar, leaf: ConsulLeafCertificate?, roots: ConsulCARoots?) {
        let logger = self.logger
        material.withLockedValue { value in
            if let leaf { value.leaf = leaf }
            if let roots { value.roots = roots }
            guard let currentLeaf = value.leaf, let currentRoots = value.roots else { return }
            do {
                let credentials = try Self.credentials(leaf: currentLeaf, roots: currentRoots)
                let current = sidecar.currentCredentials
                // A watch's first answer repeats what startup fetched: nothing to swap.
                if credentials.leaf.serialNumber == current.leaf.serialNumber,
                   credentials.trustedRoots.map(\.serialNumber) == current.trustedRoots.map(\.serialNumber) {
                    return
                }
                try sidecar.updateCredentials(credentials)
            } catch {
                logger.error("certificates from Consul refused; keeping the current ones", metadata: ["error": "\(error)"])
            }
        }
    }

    static func credentials(leaf: ConsulLeafCertificate, roots: ConsulCARoots) throws -> TLSCredentials {
        // Trust every listed root: during a CA rotation peers still hold leaves from the old one.
        try TLSCredentials.parse(certificatePEM: Array(leaf.certPEM.utf8), keyPEM: Array(leaf.privateKeyPEM.utf8),
                                 rootsPEM: Array(roots.trustedRootsPEM.utf8),
                                 names: (certificate: "Consul leaf for \(leaf.service)", key: "Consul leaf key",
                                         roots: "Consul CA roots"),
                                 trustDomain: roots.trustDomain.isEmpty ? nil : roots.trustDomain)
    }

    /// One health watch per upstream destination (and datacenter) in the registration.
    private func reconcileInstanceWatches(sidecar: Sidecar, definition: ProxyDefinition) {
        var wanted: [String: Upstream] = [:]
        for upstream in definition.upstreams { wanted["upstream:\(upstream.instanceKey)"] = upstream }
        let stale = watches.withLockedValue { value -> [Task<Void, Never>] in
            let keys = value.keys.filter { $0.hasPrefix("upstream:") && wanted[$0] == nil }
            return keys.compactMap { value.removeValue(forKey: $0) }
        }
        for task in stale { task.cancel() }
        let localDatacenter = sidecar.datacenter
        for (key, upstream) in wanted where watches.withLockedValue({ $0[key] }) == nil {
            let destination = upstream.destinationName, instanceKey = upstream.instanceKey
            let path = "/v1/health/connect/\(ConsulClient.segment(destination))"
            var query = [("passing", "1")]
            if let datacenter = upstream.datacenter { query.append(("dc", datacenter)) }
            // Only a registration from Consul Enterprise states a tenancy; CE refuses any `?ns=`.
            if definition.tenancy != nil { query += upstream.tenancy.queryItems }
            // Another datacenter is reached on the WAN tagged addresses, as Consul does.
            let wan = upstream.datacenter.map { $0 != localDatacenter } ?? false
            let logger = self.logger
            watch(key, name: "upstream:\(instanceKey)", path: path, query: query,
                  decode: { try ConsulServiceInstance.decodeUsable($0, source: $1) }) { answer in
                for line in answer.skipped {
                    logger.warning("upstream instance skipped", metadata: ["upstream": "\(instanceKey)", "reason": "\(line)"])
                }
                let endpoints = answer.instances.filter(\.isPassing).map { instance in
                    let (host, port) = instance.bestAddress(wan: wan)
                    return Endpoint(host: host, port: port, datacenter: instance.node.datacenter)
                }
                sidecar.updateInstances(endpoints, for: instanceKey)
                logger.info("upstream instances", metadata: [
                    "upstream": "\(instanceKey)", "instances": "\(endpoints.map(\.description).joined(separator: ","))",
                ])
            }
        }
    }

    private func launch(_ key: String, _ body: @escaping @Sendable () async -> Void) {
        let task = Task { await body() }
        watches.withLockedValue { $0[key] = task }
    }
}

/// What no matching intention decides, as Consul: the agent's DefaultIntentionPolicy when it
/// could be read and is set, else the ACL default policy every answer reports in
/// X-Consul-Default-ACL-Policy, else (an agent that sends neither) the operator's
/// --default-intention.
final class DefaultIntention: Sendable {
    private let agentPolicy: IntentionAction?
    private let fallback: IntentionAction
    private let aclPolicy = NIOLockedValueBox<IntentionAction?>(nil)
    private let announced = NIOLockedValueBox<IntentionAction?>(nil)

    init(agentPolicy: IntentionAction?, fallback: IntentionAction) {
        self.agentPolicy = agentPolicy
        self.fallback = fallback
    }

    var current: IntentionAction { agentPolicy ?? aclPolicy.withLockedValue { $0 } ?? fallback }

    var source: String {
        if agentPolicy != nil { return "DefaultIntentionPolicy" }
        return aclPolicy.withLockedValue { $0 } != nil ? "X-Consul-Default-ACL-Policy" : "--default-intention"
    }

    /// Takes the header of a new answer: the decision, and whether it is new (to log it).
    func update(aclPolicy header: IntentionAction?) -> (IntentionAction, changed: Bool) {
        if let header { aclPolicy.withLockedValue { $0 = header } }
        let now = current
        let changed = announced.withLockedValue { value in
            defer { value = now }
            return value != now
        }
        return (now, changed)
    }
}
