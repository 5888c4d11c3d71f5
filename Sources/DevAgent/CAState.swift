import FoundationEssentials
import SidecarModel
import SidecarTLS

/// One CA root as listed by `/v1/agent/connect/ca/roots`.
struct CARootRecord: Sendable {
    var root: CertificateMinting.Root
    var id: String
    var pem: String
    /// For the active root after a rotation: its certificate cross-signed by the previous root.
    var intermediatePEMs: [String] = []
    var active: Bool
    var deactivatedAt: Date?
    var createIndex: UInt64
    var modifyIndex: UInt64
}

struct CAState: Sendable {
    var trustDomain: String
    var roots: [CARootRecord] = []
    var leafTTL: TimeInterval
    var rootsIndex: UInt64 = 1
    var configCreateIndex: UInt64 = 1
    var configModifyIndex: UInt64 = 1

    var activeRoot: CARootRecord { roots.first(where: \.active) ?? roots[0] }

    static func makeRecord(_ root: CertificateMinting.Root, active: Bool, index: UInt64) throws -> CARootRecord {
        CARootRecord(root: root, id: CertificateMinting.fingerprint(root.certificate),
                     pem: CertificateMinting.pem(root.certificate), active: active, createIndex: index, modifyIndex: index)
    }
}

/// Leaves are cached per service name in a namespace and partition.
struct LeafKey: Hashable, Sendable {
    var service: String
    var tenancy: Tenancy
}

/// A cached leaf certificate for one service name.
struct LeafRecord: Sendable {
    var service: String
    var tenancy: Tenancy
    var key: LeafKey { LeafKey(service: service, tenancy: tenancy) }
    var serialNumber: String
    /// The leaf followed by the active root's intermediates.
    var certPEM: String
    var privateKeyPEM: String
    var serviceURI: String
    var validAfter: Date
    var validBefore: Date
    var createIndex: UInt64
    var modifyIndex: UInt64
    /// Identifies the mint, so a renewal timer scheduled for an older one does nothing.
    var generation: Int
}

extension AgentState {
    /// Consul's service identity: `/ap/<partition>` only outside the default partition.
    func serviceURI(for key: LeafKey, datacenter: String) -> String {
        SPIFFEID(trustDomain: ca.trustDomain, partition: key.tenancy.partition, namespace: key.tenancy.namespace,
                 datacenter: datacenter, service: key.service).uri
    }

    /// Mints (or re-mints) the leaf for `key` with the active root and the current TTL.
    mutating func mintLeaf(_ key: LeafKey, datacenter: String) throws -> LeafRecord {
        let leaf = try makeLeaf(key, datacenter: datacenter, index: nextIndex())
        leaves[key] = leaf
        return leaf
    }

    /// A leaf for `key` that expired an hour ago, not stored (the expired-leaf test fault).
    func expiredLeaf(_ key: LeafKey, datacenter: String) throws -> LeafRecord {
        try makeLeaf(key, datacenter: datacenter, index: index, now: Date() - 3660, ttl: 60)
    }

    private func makeLeaf(_ key: LeafKey, datacenter: String, index: UInt64, now: Date = Date(),
                          ttl: TimeInterval? = nil) throws -> LeafRecord {
        let service = key.service
        let active = ca.activeRoot
        let uri = serviceURI(for: key, datacenter: datacenter)
        let minted = try CertificateMinting.makeLeaf(serviceURI: uri, commonName: service, ttl: ttl ?? ca.leafTTL, root: active.root, now: now)
        let previous = leaves[key]
        let leaf = LeafRecord(
            service: service,
            tenancy: key.tenancy,
            serialNumber: Format.colonHex(minted.serialBytes),
            certPEM: CertificateMinting.pem(minted.certificate) + active.intermediatePEMs.joined(),
            privateKeyPEM: minted.key.traditionalPEM,
            serviceURI: uri,
            validAfter: minted.certificate.notBefore,
            validBefore: minted.certificate.notAfter,
            createIndex: previous?.createIndex ?? index,
            modifyIndex: index,
            generation: (previous?.generation ?? 0) + 1
        )
        return leaf
    }

    /// A new active root (with `key`, or a fresh one), cross-signed by the current one, which
    /// stays listed as inactive until pruned.
    mutating func rotateCA(key: PrivateKey?) throws {
        let old = ca.activeRoot
        let newRoot = try CertificateMinting.makeRoot(trustDomain: ca.trustDomain, key: key)
        let cross = try CertificateMinting.crossSign(newRoot, by: old.root, trustDomain: ca.trustDomain)
        let index = nextIndex()
        var record = try CAState.makeRecord(newRoot, active: true, index: index)
        record.intermediatePEMs = [CertificateMinting.pem(cross)]
        for position in ca.roots.indices where ca.roots[position].active {
            ca.roots[position].active = false
            ca.roots[position].deactivatedAt = Date()
            ca.roots[position].modifyIndex = index
        }
        ca.roots.append(record)
        ca.rootsIndex = index
        ca.configModifyIndex = index
    }

    /// Drops inactive roots deactivated before `cutoff`; true when any went.
    mutating func pruneRoots(deactivatedBefore cutoff: Date) -> Bool {
        let kept = ca.roots.filter { $0.active || ($0.deactivatedAt ?? .distantFuture) > cutoff }
        guard kept.count != ca.roots.count else { return false }
        ca.roots = kept
        ca.rootsIndex = nextIndex()
        return true
    }
}
