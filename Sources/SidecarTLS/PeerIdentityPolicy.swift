import SidecarModel

/// Which side of the TLS connection we are. The peer's certificate must be fit for the opposite
/// side: a server checks its client for clientAuth, a client checks its server for serverAuth.
package enum TLSRole: Sendable {
    case server
    case client
}

/// The parts of a peer's leaf certificate that decide its identity. Extracted from OpenSSL once,
/// evaluated by pure code so every rule is unit-testable without certificates.
struct LeafCertificateFacts: Sendable, Equatable {
    package struct ExtendedKeyUsage: Sendable, Equatable {
        var clientAuth: Bool
        var serverAuth: Bool
        init(clientAuth: Bool, serverAuth: Bool) {
            self.clientAuth = clientAuth
            self.serverAuth = serverAuth
        }
    }

    var uriSANs: [String]
    /// nil when the certificate has no extendedKeyUsage extension at all.
    var extendedKeyUsage: ExtendedKeyUsage?
    var isCA: Bool

    init(uriSANs: [String], extendedKeyUsage: ExtendedKeyUsage?, isCA: Bool) {
        self.uriSANs = uriSANs
        self.extendedKeyUsage = extendedKeyUsage
        self.isCA = isCA
    }
}

/// Why a peer was refused. The text goes to the audit log verbatim.
package enum PeerVerificationError: Error, Equatable, CustomStringConvertible {
    case noCertificate
    case chain(String)
    case leafIsCA
    case missingExtendedKeyUsage(String)
    case noURISAN
    case multipleURISANs(Int)
    case invalidSPIFFEID(String, SPIFFEIDError)
    case wrongTrustDomain(got: String, expected: String)
    case unexpectedIdentity(got: String, expected: String)

    package var description: String {
        switch self {
        case .noCertificate: return "peer presented no certificate"
        case .chain(let reason): return "certificate chain rejected: \(reason)"
        case .leafIsCA: return "peer leaf certificate is a CA (basicConstraints CA:TRUE)"
        case .missingExtendedKeyUsage(let usage): return "peer certificate lacks extendedKeyUsage \(usage)"
        case .noURISAN: return "peer certificate has no URI SAN"
        case .multipleURISANs(let count): return "peer certificate has \(count) URI SANs, exactly one is allowed"
        case .invalidSPIFFEID(let uri, let error): return "peer URI SAN \"\(uri)\" is not a service identity: \(error)"
        case .wrongTrustDomain(let got, let expected): return "peer trust domain \(got) is not \(expected)"
        case .unexpectedIdentity(let got, let expected): return "peer identity \(got) is not the expected \(expected)"
        }
    }
}

/// The identity rules applied to a peer leaf once its chain has verified against our roots.
struct PeerIdentityPolicy: Sendable {
    var role: TLSRole
    var trustDomain: String
    /// Client role: the destination we dialed. nil accepts any service in our trust domain.
    var expectedPeer: SPIFFEID?

    init(role: TLSRole, trustDomain: String, expectedPeer: SPIFFEID? = nil) {
        self.role = role
        self.trustDomain = trustDomain.lowercased()
        self.expectedPeer = expectedPeer
    }

    func evaluate(_ facts: LeafCertificateFacts) -> Result<SPIFFEID, PeerVerificationError> {
        if facts.isCA { return .failure(.leafIsCA) }
        switch role {
        case .server:
            guard facts.extendedKeyUsage?.clientAuth == true else { return .failure(.missingExtendedKeyUsage("clientAuth")) }
        case .client:
            guard facts.extendedKeyUsage?.serverAuth == true else { return .failure(.missingExtendedKeyUsage("serverAuth")) }
        }
        guard let uri = facts.uriSANs.first else { return .failure(.noURISAN) }
        guard facts.uriSANs.count == 1 else { return .failure(.multipleURISANs(facts.uriSANs.count)) }
        let identity: SPIFFEID
        do {
            identity = try SPIFFEID.parse(uri)
        } catch let error as SPIFFEIDError {
            return .failure(.invalidSPIFFEID(uri, error))
        } catch {
            return .failure(.invalidSPIFFEID(uri, .notSPIFFEScheme))
        }
        guard identity.trustDomain == trustDomain else {
            return .failure(.wrongTrustDomain(got: identity.trustDomain, expected: trustDomain))
        }
        if let expectedPeer, !identity.sameService(as: expectedPeer) {
            return .failure(.unexpectedIdentity(got: identity.uri, expected: expectedPeer.uri))
        }
        return .success(identity)
    }
}
