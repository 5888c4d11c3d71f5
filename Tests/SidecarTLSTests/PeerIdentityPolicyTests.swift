import Testing
@testable import SidecarTLS
@testable import SidecarModel

@Suite("PeerIdentityPolicy")
struct PeerIdentityPolicyTests {
    static let td = "11111111-2222-3333-4444-555555555555.consul"
    static let webURI = "spiffe://\(td)/ns/default/dc/dc1/svc/web"
    static let both = LeafCertificateFacts.ExtendedKeyUsage(clientAuth: true, serverAuth: true)
    static let clientOnly = LeafCertificateFacts.ExtendedKeyUsage(clientAuth: true, serverAuth: false)
    static let serverOnly = LeafCertificateFacts.ExtendedKeyUsage(clientAuth: false, serverAuth: true)
    static let neither = LeafCertificateFacts.ExtendedKeyUsage(clientAuth: false, serverAuth: false)

    static func facts(_ uris: [String] = [webURI], eku: LeafCertificateFacts.ExtendedKeyUsage? = both,
                      isCA: Bool = false) -> LeafCertificateFacts {
        LeafCertificateFacts(uriSANs: uris, extendedKeyUsage: eku, isCA: isCA)
    }

    private func failure(_ result: Result<SPIFFEID, PeerVerificationError>,
                         sourceLocation: SourceLocation = #_sourceLocation) -> PeerVerificationError? {
        switch result {
        case .success(let id):
            Issue.record("expected a refusal, got \(id)", sourceLocation: sourceLocation)
            return nil
        case .failure(let error):
            return error
        }
    }

    // MARK: - Extended key usage

    @Test("server role requires clientAuth on the peer", arguments: [
        (LeafCertificateFacts.ExtendedKeyUsage?.some(both), true),
        (.some(clientOnly), true),
        (.some(serverOnly), false),
        (.some(neither), false),
        (nil, false),
    ])
    func serverRoleEKU(eku: LeafCertificateFacts.ExtendedKeyUsage?, accepted: Bool) {
        let policy = PeerIdentityPolicy(role: .server, trustDomain: Self.td)
        let result = policy.evaluate(Self.facts(eku: eku))
        if accepted {
            #expect(result == .success(SPIFFEID(trustDomain: Self.td, datacenter: "dc1", service: "web")))
        } else {
            #expect(result == .failure(.missingExtendedKeyUsage("clientAuth")))
        }
    }

    @Test("client role requires serverAuth on the peer", arguments: [
        (LeafCertificateFacts.ExtendedKeyUsage?.some(both), true),
        (.some(serverOnly), true),
        (.some(clientOnly), false),
        (.some(neither), false),
        (nil, false),
    ])
    func clientRoleEKU(eku: LeafCertificateFacts.ExtendedKeyUsage?, accepted: Bool) {
        let policy = PeerIdentityPolicy(role: .client, trustDomain: Self.td)
        let result = policy.evaluate(Self.facts(eku: eku))
        if accepted {
            #expect(result == .success(SPIFFEID(trustDomain: Self.td, datacenter: "dc1", service: "web")))
        } else {
            #expect(result == .failure(.missingExtendedKeyUsage("serverAuth")))
        }
    }

    // MARK: - Certificate shape

    @Test("a CA certificate as leaf is refused whatever else it carries", arguments: [TLSRole.server, .client])
    func caLeaf(role: TLSRole) {
        let policy = PeerIdentityPolicy(role: role, trustDomain: Self.td)
        #expect(policy.evaluate(Self.facts(isCA: true)) == .failure(.leafIsCA))
        #expect(policy.evaluate(Self.facts(["spiffe://\(Self.td)"], eku: nil, isCA: true)) == .failure(.leafIsCA))
    }

    @Test("exactly one URI SAN is required", arguments: [TLSRole.server, .client])
    func uriSANCount(role: TLSRole) {
        let policy = PeerIdentityPolicy(role: role, trustDomain: Self.td)
        #expect(policy.evaluate(Self.facts([])) == .failure(.noURISAN))
        #expect(policy.evaluate(Self.facts([Self.webURI, Self.webURI])) == .failure(.multipleURISANs(2)))
        let other = "spiffe://\(Self.td)/ns/default/dc/dc1/svc/db"
        #expect(policy.evaluate(Self.facts([Self.webURI, other, "https://x"])) == .failure(.multipleURISANs(3)))
    }

    @Test("a URI SAN that is not a service identity is refused with the parse error", arguments: [
        ("https://example.com/web", SPIFFEIDError.notSPIFFEScheme),
        ("spiffe://\(td)", .notAServiceIdentity("")),
        ("spiffe://\(td)/agent/client/dc/dc1/id/x", .notAServiceIdentity("/agent/client/dc/dc1/id/x")),
        ("spiffe://\(td)/ns/default/dc/dc1/svc/a%2Fb", .invalidSegment("a%2Fb")),
        ("spiffe://\(td):443/ns/default/dc/dc1/svc/web", .invalidTrustDomain("\(td):443")),
    ])
    func nonServiceURI(uri: String, parseError: SPIFFEIDError) {
        let policy = PeerIdentityPolicy(role: .server, trustDomain: Self.td)
        #expect(policy.evaluate(Self.facts([uri])) == .failure(.invalidSPIFFEID(uri, parseError)))
    }

    // MARK: - Trust domain

    @Test("trust domain is compared without letter case")
    func trustDomainCase() {
        let upperPolicy = PeerIdentityPolicy(role: .server, trustDomain: Self.td.uppercased())
        #expect(upperPolicy.trustDomain == Self.td)
        let fromUpperCert = Self.facts(["spiffe://\(Self.td.uppercased())/ns/default/dc/dc1/svc/web"])
        let expected = SPIFFEID(trustDomain: Self.td, datacenter: "dc1", service: "web")
        #expect(upperPolicy.evaluate(Self.facts()) == .success(expected))
        #expect(upperPolicy.evaluate(fromUpperCert) == .success(expected))
        #expect(PeerIdentityPolicy(role: .server, trustDomain: Self.td).evaluate(fromUpperCert) == .success(expected))
    }

    @Test("a service from another trust domain is refused", arguments: [
        "spiffe://22222222-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
        "spiffe://11111111-2222-3333-4444-555555555555.consul.evil/ns/default/dc/dc1/svc/web",
        "spiffe://consul/ns/default/dc/dc1/svc/web",
    ])
    func wrongTrustDomain(uri: String) throws {
        let policy = PeerIdentityPolicy(role: .client, trustDomain: Self.td)
        let got = try SPIFFEID.parse(uri).trustDomain
        #expect(policy.evaluate(Self.facts([uri])) == .failure(.wrongTrustDomain(got: got, expected: Self.td)))
    }

    // MARK: - Expected peer

    static let expectedPeer = SPIFFEID(trustDomain: td, partition: "part1", namespace: "ops",
                                       datacenter: "dc2", service: "storage")

    @Test("the expected peer is accepted, also with different letter case in the trust domain")
    func expectedPeerMatch() {
        let policy = PeerIdentityPolicy(role: .client, trustDomain: Self.td, expectedPeer: Self.expectedPeer)
        let uri = "spiffe://\(Self.td)/ap/part1/ns/ops/dc/dc2/svc/storage"
        #expect(policy.evaluate(Self.facts([uri])) == .success(Self.expectedPeer))
        let upper = "spiffe://\(Self.td.uppercased())/ap/part1/ns/ops/dc/dc2/svc/storage"
        #expect(policy.evaluate(Self.facts([upper])) == .success(Self.expectedPeer))
    }

    @Test("a different workload than the expected peer is refused", arguments: [
        ("service", "spiffe://\(td)/ap/part1/ns/ops/dc/dc2/svc/web"),
        ("namespace", "spiffe://\(td)/ap/part1/ns/default/dc/dc2/svc/storage"),
        ("partition", "spiffe://\(td)/ap/part2/ns/ops/dc/dc2/svc/storage"),
        ("default partition", "spiffe://\(td)/ns/ops/dc/dc2/svc/storage"),
        ("datacenter", "spiffe://\(td)/ap/part1/ns/ops/dc/dc1/svc/storage"),
        ("service case", "spiffe://\(td)/ap/part1/ns/ops/dc/dc2/svc/Storage"),
    ])
    func expectedPeerMismatch(field: String, uri: String) throws {
        let policy = PeerIdentityPolicy(role: .client, trustDomain: Self.td, expectedPeer: Self.expectedPeer)
        let got = try SPIFFEID.parse(uri)
        let error = failure(policy.evaluate(Self.facts([uri])))
        #expect(error == .unexpectedIdentity(got: got.uri, expected: Self.expectedPeer.uri), "mismatch on \(field)")
    }

    @Test("without an expected peer any service of the trust domain is accepted")
    func anyService() throws {
        let policy = PeerIdentityPolicy(role: .server, trustDomain: Self.td)
        for uri in ["spiffe://\(Self.td)/ap/x/ns/y/dc/z/svc/anything", Self.webURI] {
            #expect(policy.evaluate(Self.facts([uri])) == .success(try SPIFFEID.parse(uri)))
        }
    }

    @Test("checks run in order: CA, then EKU, then SAN count, then identity")
    func checkOrder() {
        let policy = PeerIdentityPolicy(role: .server, trustDomain: Self.td, expectedPeer: Self.expectedPeer)
        #expect(policy.evaluate(Self.facts([], eku: nil, isCA: true)) == .failure(.leafIsCA))
        #expect(policy.evaluate(Self.facts([], eku: nil)) == .failure(.missingExtendedKeyUsage("clientAuth")))
        #expect(policy.evaluate(Self.facts(["https://x", "https://y"])) == .failure(.multipleURISANs(2)))
        #expect(policy.evaluate(Self.facts(["spiffe://other.consul/ns/default/dc/dc1/svc/web"]))
            == .failure(.wrongTrustDomain(got: "other.consul", expected: Self.td)))
    }

    // MARK: - Error text (goes to the audit log)

    @Test("error descriptions are non-empty and carry the key value", arguments: [
        (PeerVerificationError.noCertificate, "no certificate"),
        (.chain("certificate has expired"), "certificate has expired"),
        (.leafIsCA, "CA"),
        (.missingExtendedKeyUsage("clientAuth"), "clientAuth"),
        (.missingExtendedKeyUsage("serverAuth"), "serverAuth"),
        (.noURISAN, "URI SAN"),
        (.multipleURISANs(3), "3"),
        (.invalidSPIFFEID("https://x/y", .notSPIFFEScheme), "https://x/y"),
        (.invalidSPIFFEID("spiffe://td/a", .notAServiceIdentity("/a")), "\"/a\""),
        (.wrongTrustDomain(got: "evil.consul", expected: "good.consul"), "evil.consul"),
        (.wrongTrustDomain(got: "evil.consul", expected: "good.consul"), "good.consul"),
        (.unexpectedIdentity(got: "spiffe://td/ns/default/dc/dc1/svc/web",
                             expected: "spiffe://td/ns/default/dc/dc1/svc/db"), "svc/web"),
        (.unexpectedIdentity(got: "spiffe://td/ns/default/dc/dc1/svc/web",
                             expected: "spiffe://td/ns/default/dc/dc1/svc/db"), "svc/db"),
    ])
    func errorDescriptions(error: PeerVerificationError, needle: String) {
        #expect(!error.description.isEmpty)
        #expect(error.description.contains(needle), "\(error.description)")
    }

    @Test("the evaluated refusal's text names the offending value")
    func evaluatedErrorText() throws {
        let policy = PeerIdentityPolicy(role: .client, trustDomain: Self.td, expectedPeer: Self.expectedPeer)
        let uri = "spiffe://\(Self.td)/ap/part1/ns/ops/dc/dc2/svc/impostor"
        let error = try #require(failure(policy.evaluate(Self.facts([uri]))))
        #expect(error.description.contains("impostor"))
        #expect(error.description.contains("storage"))

        let wrongTD = try #require(failure(policy.evaluate(Self.facts(["spiffe://evil.consul/ns/ops/dc/dc2/svc/storage"]))))
        #expect(wrongTD.description.contains("evil.consul"))
        #expect(wrongTD.description.contains(Self.td))
    }
}
