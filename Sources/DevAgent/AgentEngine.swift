import Dispatch
import FoundationEssentials
import Logging
import SidecarModel
import SidecarTLS

/// The agent's behaviour behind both the HTTP API and the Swift helpers: writes to the store
/// plus the timers real Consul runs (TTL expiry, leaf renewal, root pruning).
final class AgentEngine: Sendable {
    let store: AgentStore
    let configuration: DevAgentConfiguration
    let rendering: ServiceRendering
    /// What no matching intention decides: DefaultIntentionPolicy when set, else the ACL
    /// default policy (as Consul).
    let defaultIntentionAction: IntentionAction
    /// `acl.default_policy`, reported on every response as X-Consul-Default-ACL-Policy
    /// ("allow" while ACLs are off, as Consul).
    let aclDefaultAction: IntentionAction

    init(configuration: DevAgentConfiguration) throws {
        guard let aclPolicy = IntentionAction(rawValue: configuration.aclDefaultPolicy.lowercased()) else {
            throw DevAgentError("aclDefaultPolicy \"\(configuration.aclDefaultPolicy)\" is not \"allow\" or \"deny\"")
        }
        let aclDefault: IntentionAction = configuration.aclToken == nil ? .allow : aclPolicy
        let intentionPolicy = configuration.defaultIntentionPolicy.lowercased()
        guard let policy = intentionPolicy.isEmpty ? aclDefault : IntentionAction(rawValue: intentionPolicy) else {
            throw DevAgentError("defaultIntentionPolicy \"\(configuration.defaultIntentionPolicy)\" is not \"allow\", \"deny\" or empty")
        }
        self.aclDefaultAction = aclDefault
        guard configuration.leafTTL > 0 else { throw DevAgentError("leafTTL must be positive") }
        self.configuration = configuration
        self.defaultIntentionAction = policy
        let trustDomain = configuration.trustDomain ?? "\(UUID().uuidString.lowercased()).consul"
        var ca = CAState(trustDomain: trustDomain, leafTTL: configuration.leafTTL)
        ca.roots = [try CAState.makeRecord(try CertificateMinting.makeRoot(trustDomain: trustDomain), active: true, index: 1)]
        var state = AgentState(ca: ca)
        for method in configuration.authMethods { state.authMethods[method.name] = try RegisteredAuthMethod(method) }
        store = AgentStore(state)
        // A node ID stable for this agent, derived from the trust domain.
        let nodeID = IntentionRendering.stableID("node/" + trustDomain)
        rendering = ServiceRendering(datacenter: configuration.datacenter, nodeName: configuration.nodeName, nodeID: nodeID,
                                     enterprise: configuration.enterprise)
    }

    var logger: Logger { configuration.logger }

    // MARK: Services and checks

    /// Consul's vetServiceRegister: service:write on the service, its sidecar and, for a
    /// proxy, on the service it stands for.
    func register(_ body: Fields, tenancy: Tenancy = .default, access: ACLAccess = .management) throws {
        let enterprise = configuration.enterprise
        let ttlChecks = try store.write { state -> [CheckRecord] in
            let definition = try ServiceDefinition.parse(body, tenancy: enterprise ? tenancy : nil) { id in
                state.services[id].map(\.port) ?? state.freeSidecarPort(excluding: id)
            }
            for service in [definition.service] + (definition.sidecar.map { [$0.service] } ?? []) {
                try access.require(.serviceWrite(service.name))
                if let destination = service.proxy?.destinationServiceName { try access.require(.serviceWrite(destination)) }
            }
            state.register(definition.service, checks: definition.checks)
            var registered = definition.checks
            if let sidecar = definition.sidecar {
                state.register(sidecar.service, checks: sidecar.checks)
                registered += sidecar.checks
            }
            return registered.compactMap { state.checks[$0.id] }.filter { $0.ttl != nil }
        }
        ttlChecks.forEach(scheduleTTLExpiry)
    }

    func deregister(_ id: String, access: ACLAccess = .management) throws {
        if let name = store.read({ $0.services[id]?.name }) { try access.require(.serviceWrite(name)) }
        let removed = store.write { $0.deregister(id) }
        guard !removed.isEmpty else { throw HTTPError.notFound("Unknown service ID \"\(id)\". Ensure that the service ID is passed, not the service name.") }
    }

    /// Service checks need service:write on their service; node checks node:write, which no
    /// grant but management has here.
    func updateCheck(_ id: String, status: String, output: String, access: ACLAccess = .management) throws {
        guard CheckStatus.all.contains(status) else { throw HTTPError.badRequest("Invalid check status: \"\(status)\"") }
        if let check = store.read({ $0.checks[id] }) {
            if check.serviceName.isEmpty {
                guard access.grant == .management else {
                    throw HTTPError(status: 403, message: "Permission denied: token with AccessorID '\(access.accessorID)' lacks permission 'node:write' on \"\(access.node)\"")
                }
            } else {
                try access.require(.serviceWrite(check.serviceName))
            }
        }
        guard let check = store.write({ $0.updateCheck(id, status: status, output: output) }) else {
            throw HTTPError.notFound("unknown check ID \"\(id)\"")
        }
        if check.ttl != nil { scheduleTTLExpiry(check) }
    }

    /// A TTL check not refreshed within its TTL goes critical (Consul's CheckTTL timer).
    private func scheduleTTLExpiry(_ check: CheckRecord) {
        guard let ttl = check.ttl else { return }
        let generation = check.generation
        Task { [weak self] in
            try? await Task.sleep(for: .seconds(ttl))
            guard let self else { return }
            self.store.write { state in
                guard let current = state.checks[check.id], current.generation == generation else { return }
                _ = state.updateCheck(check.id, status: "critical", output: "TTL expired")
            }
        }
    }

    // MARK: CA

    /// The cached leaf for `service`, minted on first use.
    func leaf(for service: String, tenancy: Tenancy = .default) throws -> LeafRecord {
        let key = LeafKey(service: service, tenancy: tenancy)
        if let leaf = store.read({ $0.leaves[key] }) { return leaf }
        let (leaf, minted) = try store.write { state -> (LeafRecord, Bool) in
            if let leaf = state.leaves[key] { return (leaf, false) }
            return (try state.mintLeaf(key, datacenter: configuration.datacenter), true)
        }
        if minted { scheduleRenewal(leaf, after: renewalDelay(leaf)) }
        return leaf
    }

    /// Consul renews at a random point between 60% and 90% of the leaf's lifetime.
    private func renewalDelay(_ leaf: LeafRecord) -> TimeInterval {
        let lifetime = leaf.validBefore.timeIntervalSince(leaf.validAfter) - CertificateMinting.clockSkew
        let renewAt = leaf.validAfter + CertificateMinting.clockSkew + lifetime * Double.random(in: 0.6...0.9)
        return max(0, renewAt.timeIntervalSinceNow)
    }

    /// On Dispatch's threads, not the Swift concurrency pool: a renewal keeps time when the
    /// process's tasks are all busy (the suite runs the agent in-process beside hundreds).
    private func scheduleRenewal(_ leaf: LeafRecord, after delay: TimeInterval) {
        let generation = leaf.generation
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [weak self] in
            self?.remint(leaf.key, ifGeneration: generation)
        }
    }

    private func remint(_ key: LeafKey, ifGeneration generation: Int) {
        let service = key.service
        do {
            let leaf = try store.write { state -> LeafRecord? in
                guard state.leaves[key]?.generation == generation else { return nil }
                return try state.mintLeaf(key, datacenter: configuration.datacenter)
            }
            if let leaf {
                logger.debug("dev agent: renewed leaf", metadata: ["service": "\(service)", "serial": "\(leaf.serialNumber)"])
                scheduleRenewal(leaf, after: renewalDelay(leaf))
            }
        } catch {
            logger.error("dev agent: leaf renewal failed", metadata: ["service": "\(service)", "error": "\(error)"])
        }
    }

    /// A new active root; leaves follow within `rootRenewJitter`, the old root is pruned
    /// after twice the leaf TTL.
    func rotateCA(key: PrivateKey? = nil) throws {
        let leaves = try store.write { state -> [LeafRecord] in
            try state.rotateCA(key: key)
            return Array(state.leaves.values)
        }
        logger.info("dev agent: CA rotated", metadata: ["activeRootID": "\(store.read { $0.ca.activeRoot.id })"])
        for leaf in leaves {
            let jitter = configuration.rootRenewJitter
            scheduleRenewal(leaf, after: Double.random(in: jitter.lowerBound...max(jitter.lowerBound, jitter.upperBound)))
        }
        let retention = 2 * store.read { $0.ca.leafTTL }
        Task { [weak self] in
            try? await Task.sleep(for: .seconds(retention + 0.05))
            self?.store.write { _ = $0.pruneRoots(deactivatedBefore: Date() - retention) }
        }
    }

    /// `PUT /v1/connect/ca/configuration` for the built-in provider.
    func updateCAConfiguration(_ body: Fields) throws {
        if let provider = try body.string("Provider"), !provider.isEmpty, provider != "consul" {
            throw HTTPError.badRequest("the dev agent only supports the \"consul\" CA provider")
        }
        let config = body.field("Config")
        var rotateKey: PrivateKey?
        var rotate = false
        if let pem = try config?.string("PrivateKey"), !pem.isEmpty {
            guard let key = try? PrivateKey.parsePEM(Array(pem.utf8), source: "Config.PrivateKey"), key.algorithm == .ecP256 else {
                throw HTTPError.badRequest("Config.PrivateKey is not an EC P-256 private key in PEM")
            }
            if !key.sameKey(as: store.read({ $0.ca.activeRoot.root.key })) {
                rotateKey = key
                rotate = true
            }
        }
        // Dev-agent extension: `"GenerateNewKey": true` rotates to a freshly generated key.
        if try config?.bool("GenerateNewKey") == true { rotate = true }
        if let ttlText = try config?.string("LeafCertTTL") {
            guard let nanoseconds = ConfigDuration.parse(ttlText) else {
                throw HTTPError.badRequest("Config.LeafCertTTL \"\(ttlText)\" is not a duration")
            }
            store.write { state in
                state.ca.leafTTL = Double(nanoseconds) / 1e9
                state.ca.configModifyIndex = state.nextIndex()
            }
        }
        if rotate { try rotateCA(key: rotateKey) }
    }

    // MARK: Config entries

    func writeConfigEntry(_ value: JSONValue, source: String, tenancy: Tenancy = .default, access: ACLAccess = .management) throws {
        let entry = try ConfigEntryRecord.parse(value, source: source, tenancy: configuration.enterprise ? tenancy : nil)
        try access.require(ConfigEndpoints.write(entry.kind, entry.name))
        store.write { $0.writeConfigEntry(entry) }
    }

    // MARK: ACL

    func isValidToken(_ token: String?) -> Bool {
        guard let token, !token.isEmpty else { return configuration.aclToken == nil }
        return (try? access(for: token)) != nil
    }

    /// The grant a request's token carries. No token is the anonymous token; an unknown,
    /// logged-out or expired one is Consul's 403 "ACL not found".
    func access(for token: String?) throws -> ACLAccess {
        let node = configuration.nodeName
        guard let root = configuration.aclToken else { return ACLAccess(grant: .management, accessorID: "", node: node) }
        guard let token, !token.isEmpty else {
            return ACLAccess(grant: .anonymous(defaultAllow: aclDefaultAction == .allow), accessorID: ACLAccess.anonymousAccessorID, node: node)
        }
        if token == root { return ACLAccess(grant: .management, accessorID: "root", node: node) }
        let now = configuration.clock()
        guard let login = store.read({ $0.loginTokens[token] }), login.isValid(at: now) else { throw HTTPError.aclNotFound }
        return ACLAccess(grant: .serviceIdentity(login.service, defaultAllow: aclDefaultAction == .allow), accessorID: login.accessorID, node: node)
    }
}
