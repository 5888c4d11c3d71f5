import FoundationEssentials
import SidecarModel

/// One immutable set of TLS material: our leaf chain and key plus every root we trust.
/// Rotation replaces the whole value; live connections keep the one they started with.
package struct TLSCredentials: Sendable {
    /// Leaf first, then any intermediates (Consul's CertPEM): all of it is sent to peers.
    package let chain: [Certificate]
    package let privateKey: PrivateKey
    /// Every root listed as trusted (several during a CA rotation).
    package let trustedRoots: [Certificate]
    /// Our SPIFFE trust domain; peers from any other are refused.
    package let trustDomain: String
    /// Our own identity, from the leaf (its namespace and partition are where intentions for
    /// us are evaluated).
    package let identity: SPIFFEID

    package var leaf: Certificate { chain[0] }

    /// Validates the material as a set: the key matches the leaf, the leaf is inside its
    /// validity window and carries one service identity in `trustDomain`.
    package init(chain: [Certificate], privateKey: PrivateKey, trustedRoots: [Certificate],
                trustDomain: String? = nil, now: Date = Date()) throws {
        guard let leaf = chain.first else { throw TLSMaterialError("certificate chain is empty") }
        guard !trustedRoots.isEmpty else { throw TLSMaterialError("no trusted root certificates") }
        guard privateKey.matches(leaf) else {
            throw TLSMaterialError("private key does not match the leaf certificate (serial \(leaf.serialNumber))")
        }
        guard leaf.notAfter > now else {
            throw TLSMaterialError("leaf certificate expired at \(leaf.notAfter) (serial \(leaf.serialNumber))")
        }
        guard leaf.notBefore <= now else {
            throw TLSMaterialError("leaf certificate is not valid before \(leaf.notBefore) (serial \(leaf.serialNumber))")
        }
        let resolvedTrustDomain = try trustDomain?.lowercased() ?? Self.trustDomain(ofRoots: trustedRoots)
        try SPIFFEID.validateTrustDomain(resolvedTrustDomain)
        let leafURIs = leaf.uriSANs
        guard leafURIs.count == 1, let identity = try? SPIFFEID.parse(leafURIs[0]) else {
            throw TLSMaterialError("leaf certificate must carry exactly one spiffe:// service URI SAN, found \(leafURIs)")
        }
        guard identity.trustDomain == resolvedTrustDomain else {
            throw TLSMaterialError("leaf identity \(identity) is outside trust domain \(resolvedTrustDomain)")
        }
        self.chain = chain
        self.privateKey = privateKey
        self.trustedRoots = trustedRoots
        self.trustDomain = resolvedTrustDomain
        self.identity = identity
    }

    /// Consul's CA puts `spiffe://<trust-domain>` in its root's URI SAN.
    static func trustDomain(ofRoots roots: [Certificate]) throws -> String {
        for root in roots {
            for uri in root.uriSANs {
                if let trustDomain = try? SPIFFEID.parseTrustDomainURI(uri) { return trustDomain }
            }
        }
        throw TLSMaterialError("no root certificate carries a spiffe://<trust-domain> URI SAN; pass --trust-domain")
    }

    /// Loads PEM files from disk (file mode).
    package static func load(certificatePath: String, keyPath: String, rootsPath: String,
                            trustDomain: String? = nil) throws -> TLSCredentials {
        func read(_ path: String) throws -> [UInt8] {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw TLSMaterialError("\(path): cannot read file")
            }
            return Array(data)
        }
        return try parse(certificatePEM: read(certificatePath), keyPEM: read(keyPath), rootsPEM: read(rootsPath),
                         names: (certificatePath, keyPath, rootsPath), trustDomain: trustDomain)
    }

    /// Builds credentials from PEM text; `names` label errors (file paths, or API fields).
    package static func parse(certificatePEM: [UInt8], keyPEM: [UInt8], rootsPEM: [UInt8],
                             names: (certificate: String, key: String, roots: String),
                             trustDomain: String? = nil) throws -> TLSCredentials {
        try TLSCredentials(
            chain: Certificate.parsePEMBundle(certificatePEM, source: names.certificate),
            privateKey: PrivateKey.parsePEM(keyPEM, source: names.key),
            trustedRoots: Certificate.parsePEMBundle(rootsPEM, source: names.roots),
            trustDomain: trustDomain
        )
    }

    /// "our leaf certificate (serial …) expired at …" once the leaf has expired, else nil:
    /// one wording for every place that must not present it (audit reasons, readiness).
    package func expiredLeafReason(now: Date = Date()) -> String? {
        guard leaf.notAfter <= now else { return nil }
        return "our leaf certificate (serial \(leaf.serialNumber)) expired at \(leaf.notAfter)"
    }

    /// Fraction of the leaf's validity period still ahead (0 when expired).
    package func remainingLifetimeFraction(now: Date = Date()) -> Double {
        let total = leaf.notAfter.timeIntervalSince(leaf.notBefore)
        guard total > 0 else { return 0 }
        return max(0, leaf.notAfter.timeIntervalSince(now) / total)
    }
}
