import DevAgent
import Foundation
import SidecarCore
import SidecarTLS
import Testing
import X509

@Suite("Dev agent: Connect CA")
struct CATests {
    @Test func rootsAndLeafShape() async throws {
        let agent = try await TestAgent.start { $0.trustDomain = "11111111-2222-3333-4444-555555555555.consul" }
        let rootsReply = try await agent.get("/v1/agent/connect/ca/roots")
        let roots = try ConsulCARoots.decode(rootsReply.body, source: "roots")
        #expect(roots.trustDomain == agent.agent.trustDomain)
        #expect(roots.roots.count == 1)
        let root = try #require(roots.activeRoot)
        #expect(root.active && root.intermediateCertPEMs.isEmpty)
        #expect(root.id.contains(":") && root.signingKeyID.contains(":"))
        let rawRoot = try #require((try rootsReply.object()["Roots"] as? [[String: Any]])?.first)
        #expect(rawRoot["PrivateKeyType"] as? String == "ec" && rawRoot["PrivateKeyBits"] as? Int == 256)
        #expect(try await agent.get("/v1/connect/ca/roots").status == 200)
        let rootCertificate = try X509.Certificate(pemEncoded: root.rootCertPEM)
        #expect(try rootCertificate.extensions.basicConstraints == .isCertificateAuthority(maxPathLength: nil))
        #expect(try rootCertificate.extensions.subjectAlternativeNames?.first == .uniformResourceIdentifier("spiffe://\(roots.trustDomain)"))

        let reply = try await agent.get("/v1/agent/connect/ca/leaf/storage")
        let leaf = try ConsulLeafCertificate.decode(reply.body, source: "leaf")
        #expect(reply.index == leaf.modifyIndex)
        #expect(leaf.privateKeyPEM.hasPrefix("-----BEGIN EC PRIVATE KEY-----"))
        let expectedURI = "spiffe://\(roots.trustDomain)/ns/default/dc/dc1/svc/storage"
        #expect(leaf.serviceURI == expectedURI)
        let certificate = try X509.Certificate(pemEncoded: leaf.certPEM)
        let sans = try #require(try certificate.extensions.subjectAlternativeNames)
        #expect(Array(sans) == [.uniformResourceIdentifier(expectedURI)])
        #expect(try certificate.extensions.basicConstraints == .notCertificateAuthority)
        let usage = try #require(try certificate.extensions.keyUsage)
        #expect(usage.digitalSignature && usage.keyEncipherment && usage.dataEncipherment && usage.keyAgreement)
        #expect(!usage.keyCertSign)
        let eku = try #require(try certificate.extensions.extendedKeyUsage)
        #expect(eku.contains(.serverAuth) && eku.contains(.clientAuth))
        #expect(try certificate.extensions.authorityKeyIdentifier?.keyIdentifier
                == rootCertificate.extensions.subjectKeyIdentifier?.keyIdentifier)
        #expect(Format.colonHexSerial(certificate) == leaf.serialNumber)

        // OpenSSL (what the sidecar uses) agrees: the key matches and the chain verifies.
        let key = try SidecarTLS.PrivateKey.parsePEM(Array(leaf.privateKeyPEM.utf8), source: "leaf key")
        let parsed = try SidecarTLS.Certificate.parsePEMBundle(Array(leaf.certPEM.utf8), source: "leaf")
        #expect(key.matches(parsed[0]))
        #expect(parsed[0].uriSANs == [expectedURI])
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try root.rootCertPEM.write(to: directory.appendingPathComponent("root.pem"), atomically: true, encoding: .utf8)
        try leaf.certPEM.write(to: directory.appendingPathComponent("leaf.pem"), atomically: true, encoding: .utf8)
        let verify = try await runCommand("/usr/bin/openssl", ["verify", "-CAfile", directory.appendingPathComponent("root.pem").path,
                                                               directory.appendingPathComponent("leaf.pem").path])
        #expect(verify.status == 0, "\(verify.output)")

        // Cached: the same leaf again.
        let again = try ConsulLeafCertificate.decode(try await agent.get("/v1/agent/connect/ca/leaf/storage").body, source: "leaf")
        #expect(again.serialNumber == leaf.serialNumber)
    }

    @Test func leafRenewsBeforeExpiryAndWakesBlockingCall() async throws {
        let agent = try await TestAgent.start { $0.leafTTL = 2 }
        let first = try await agent.get("/v1/agent/connect/ca/leaf/web")
        let firstLeaf = try ConsulLeafCertificate.decode(first.body, source: "leaf")
        let start = ContinuousClock.now
        let renewed = try await agent.get("/v1/agent/connect/ca/leaf/web?index=\(try #require(first.index))&wait=5s")
        let seconds = elapsed(since: start)
        let second = try ConsulLeafCertificate.decode(renewed.body, source: "leaf")
        #expect(second.serialNumber != firstLeaf.serialNumber)
        #expect(second.modifyIndex > firstLeaf.modifyIndex && second.createIndex == firstLeaf.createIndex)
        // Renewal is due 1.2-1.8 s after the mint; under a loaded CI machine only the bound that
        // proves a renewal (not the 5 s wait running out) woke the call is stable.
        #expect(seconds < 4.5, "renewed after \(seconds) s")
    }

    @Test func rotationCrossSignsAndLeavesChainToBothRoots() async throws {
        let agent = try await TestAgent.start { $0.rootRenewJitter = 0...0.2 }
        let before = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        let oldRoot = try #require(before.activeRoot)
        let firstLeaf = try await agent.get("/v1/agent/connect/ca/leaf/storage")
        let firstSerial = try ConsulLeafCertificate.decode(firstLeaf.body, source: "leaf").serialNumber

        try agent.agent.rotateCA()
        let renewed = try await agent.get("/v1/agent/connect/ca/leaf/storage?index=\(try #require(firstLeaf.index))&wait=5s")
        let leaf = try ConsulLeafCertificate.decode(renewed.body, source: "leaf")
        #expect(leaf.serialNumber != firstSerial)

        let after = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        #expect(after.roots.count == 2)
        let newRoot = try #require(after.activeRoot)
        #expect(newRoot.id != oldRoot.id && newRoot.serialNumber != oldRoot.serialNumber)
        #expect(after.roots.first { $0.id == oldRoot.id }?.active == false)
        let cross = try #require(newRoot.intermediateCertPEMs.first)
        let crossCertificate = try X509.Certificate(pemEncoded: cross)
        let newCertificate = try X509.Certificate(pemEncoded: newRoot.rootCertPEM)
        let oldCertificate = try X509.Certificate(pemEncoded: oldRoot.rootCertPEM)
        #expect(crossCertificate.subject == newCertificate.subject && crossCertificate.publicKey == newCertificate.publicKey)
        #expect(crossCertificate.issuer == oldCertificate.subject)
        #expect(crossCertificate.notValidAfter <= oldCertificate.notValidAfter)
        // CertPEM carries the cross-signed certificate after the leaf.
        #expect(try SidecarTLS.Certificate.parsePEMBundle(Array(leaf.certPEM.utf8), source: "leaf").count == 2)

        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        func file(_ name: String, _ text: String) throws -> String {
            let url = directory.appendingPathComponent(name)
            try text.write(to: url, atomically: true, encoding: .utf8)
            return url.path
        }
        let leafOnly = try SidecarTLS.Certificate.parsePEMBundle(Array(leaf.certPEM.utf8), source: "leaf")[0].pemEncoded
        let oldPath = try file("old.pem", oldRoot.rootCertPEM), newPath = try file("new.pem", newRoot.rootCertPEM)
        let crossPath = try file("cross.pem", cross), leafPath = try file("leaf.pem", leafOnly)
        let viaOld = try await runCommand("/usr/bin/openssl", ["verify", "-CAfile", oldPath, "-untrusted", crossPath, leafPath])
        #expect(viaOld.status == 0, "\(viaOld.output)")
        let viaNew = try await runCommand("/usr/bin/openssl", ["verify", "-CAfile", newPath, leafPath])
        #expect(viaNew.status == 0, "\(viaNew.output)")
        let oldAlone = try await runCommand("/usr/bin/openssl", ["verify", "-CAfile", oldPath, leafPath])
        #expect(oldAlone.status != 0)
    }

    @Test func inactiveRootsArePrunedAfterTwiceTheLeafTTL() async throws {
        let agent = try await TestAgent.start { $0.leafTTL = 0.4 }
        try agent.agent.rotateCA()
        let during = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        #expect(during.roots.count == 2)
        try await Task.sleep(for: .milliseconds(1200))
        let after = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        #expect(after.roots.map(\.id) == [during.activeRootID])
    }

    @Test func caConfigurationReadsAndRotatesOnNewKey() async throws {
        let agent = try await TestAgent.start { $0.leafTTL = 3600 }
        let config = try await agent.get("/v1/connect/ca/configuration").object()
        #expect(config["Provider"] as? String == "consul")
        #expect((config["Config"] as? [String: Any])?["LeafCertTTL"] as? String == "1h0m0s")
        let rootsBefore = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        // Dev-agent extension: GenerateNewKey rotates; LeafCertTTL applies to the next mint.
        let reply = try await agent.put("/v1/connect/ca/configuration",
                                        #"{"Provider": "consul", "Config": {"GenerateNewKey": true, "LeafCertTTL": "2h"}}"#)
        #expect(reply.status == 200)
        let rootsAfter = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        #expect(rootsAfter.activeRootID != rootsBefore.activeRootID)
        let updated = try await agent.get("/v1/connect/ca/configuration").object()
        #expect((updated["Config"] as? [String: Any])?["LeafCertTTL"] as? String == "2h0m0s")
        #expect(try await agent.put("/v1/connect/ca/configuration", #"{"Config": {"PrivateKey": "junk"}}"#).status == 400)
    }
}


/// Colon-hex of a certificate serial, the way Consul prints it.
enum Format {
    static func colonHexSerial(_ certificate: X509.Certificate) -> String {
        certificate.serialNumber.bytes.map { String(format: "%02x", $0) }.joined(separator: ":")
    }
}
