@testable import DevAgent
import Foundation
@testable import SidecarTLS
import Testing
import TestSupport
@testable import SidecarModel

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
        // The openssl command line reads what we minted: an independent parser.
        let rootCertificate = try await OpenSSLCertificateView.read(root.rootCertPEM)
        #expect(rootCertificate.extensions["Basic Constraints"] == .init(critical: true, value: "CA:TRUE"))
        #expect(rootCertificate.extensions["Key Usage"] == .init(critical: true, value: "Digital Signature, Certificate Sign, CRL Sign"))
        #expect(rootCertificate.extensions["Subject Alternative Name"]?.value == "URI:spiffe://\(roots.trustDomain)")
        #expect(rootCertificate.subject == rootCertificate.issuer && rootCertificate.subject.hasPrefix("CN=Consul CA "))
        #expect(rootCertificate.extensions["Subject Key Identifier"]?.value.lowercased() == root.signingKeyID.lowercased())
        #expect(rootCertificate.extensions["Authority Key Identifier"]?.value == rootCertificate.extensions["Subject Key Identifier"]?.value)

        let reply = try await agent.get("/v1/agent/connect/ca/leaf/storage")
        let leaf = try ConsulLeafCertificate.decode(reply.body, source: "leaf")
        #expect(reply.index == leaf.modifyIndex)
        #expect(leaf.privateKeyPEM.hasPrefix("-----BEGIN EC PRIVATE KEY-----"))
        let expectedURI = "spiffe://\(roots.trustDomain)/ns/default/dc/dc1/svc/storage"
        #expect(leaf.serviceURI == expectedURI)
        let certificate = try await OpenSSLCertificateView.read(leaf.certPEM)
        #expect(certificate.extensions["Subject Alternative Name"]?.value == "URI:\(expectedURI)")
        #expect(certificate.extensions["Basic Constraints"] == .init(critical: true, value: "CA:FALSE"))
        #expect(certificate.extensions["Key Usage"]
                == .init(critical: true, value: "Digital Signature, Key Encipherment, Data Encipherment, Key Agreement"))
        #expect(certificate.extensions["Extended Key Usage"]
                == .init(critical: false, value: "TLS Web Server Authentication, TLS Web Client Authentication"))
        #expect(certificate.extensions["Authority Key Identifier"]?.value == rootCertificate.extensions["Subject Key Identifier"]?.value)
        #expect(certificate.extensions["Subject Key Identifier"] != nil)
        #expect(certificate.subject == "CN=storage" && certificate.issuer == rootCertificate.subject)
        #expect(certificate.serial == leaf.serialNumber)
        #expect(certificate.publicKeyAlgorithm == "id-ecPublicKey" && certificate.signatureAlgorithm == "ecdsa-with-SHA256")

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
        let renewed = try await agent.get("/v1/agent/connect/ca/leaf/web?index=\(try #require(first.index))&wait=60s")
        let seconds = elapsed(since: start)
        let second = try ConsulLeafCertificate.decode(renewed.body, source: "leaf")
        #expect(second.serialNumber != firstLeaf.serialNumber)
        #expect(second.modifyIndex > firstLeaf.modifyIndex && second.createIndex == firstLeaf.createIndex)
        // Renewal is due 1.2-1.8 s after the mint. The wait is long (60 s) so that, however
        // loaded the machine (7.6 s seen with both cores busy), only a renewal can have woken it.
        #expect(seconds < 45, "renewed after \(seconds) s")
    }

    @Test func rotationCrossSignsAndLeavesChainToBothRoots() async throws {
        let agent = try await TestAgent.start { $0.rootRenewJitter = 0...0.2 }
        let before = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        let oldRoot = try #require(before.activeRoot)
        let firstLeaf = try await agent.get("/v1/agent/connect/ca/leaf/storage")
        let firstSerial = try ConsulLeafCertificate.decode(firstLeaf.body, source: "leaf").serialNumber

        try agent.agent.rotateCA()
        let renewed = try await agent.get("/v1/agent/connect/ca/leaf/storage?index=\(try #require(firstLeaf.index))&wait=15s")
        let leaf = try ConsulLeafCertificate.decode(renewed.body, source: "leaf")
        #expect(leaf.serialNumber != firstSerial)

        let after = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        #expect(after.roots.count == 2)
        let newRoot = try #require(after.activeRoot)
        #expect(newRoot.id != oldRoot.id && newRoot.serialNumber != oldRoot.serialNumber)
        #expect(after.roots.first { $0.id == oldRoot.id }?.active == false)
        let cross = try #require(newRoot.intermediateCertPEMs.first)
        let crossCertificate = try await OpenSSLCertificateView.read(cross)
        let newCertificate = try await OpenSSLCertificateView.read(newRoot.rootCertPEM)
        let oldCertificate = try await OpenSSLCertificateView.read(oldRoot.rootCertPEM)
        #expect(crossCertificate.subject == newCertificate.subject && crossCertificate.publicKeyPEM == newCertificate.publicKeyPEM)
        #expect(crossCertificate.issuer == oldCertificate.subject)
        #expect(crossCertificate.extensions["Authority Key Identifier"]?.value == oldCertificate.extensions["Subject Key Identifier"]?.value)
        #expect(crossCertificate.extensions["Subject Key Identifier"]?.value == newCertificate.extensions["Subject Key Identifier"]?.value)
        #expect(crossCertificate.extensions["Basic Constraints"] == .init(critical: true, value: "CA:TRUE"))
        let crossEnd = try #require(SidecarTLS.Certificate.parsePEMBundle(Array(cross.utf8), source: "cross").first).notAfter
        let oldEnd = try #require(SidecarTLS.Certificate.parsePEMBundle(Array(oldRoot.rootCertPEM.utf8), source: "old").first).notAfter
        #expect(crossEnd <= oldEnd)
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
        let agent = try await TestAgent.start { $0.leafTTL = 4 }
        try agent.agent.rotateCA()
        let during = try ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
        #expect(during.roots.count == 2)
        // Pruned after 8 s (the read above must come first, even on a loaded machine);
        // awaited, since a busy machine may run the pruner late.
        #expect(await eventually {
            let after = try? ConsulCARoots.decode(try await agent.get("/v1/agent/connect/ca/roots").body, source: "roots")
            return after?.roots.map(\.id) == [during.activeRootID]
        })
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


/// A certificate as `openssl x509` prints it: an independent reading of what the dev CA minted.
struct OpenSSLCertificateView {
    struct Extension: Equatable {
        var critical: Bool
        var value: String
    }

    /// By name without the "X509v3 " prefix, e.g. "Basic Constraints".
    var extensions: [String: Extension] = [:]
    var subject = ""
    var issuer = ""
    /// Lowercase colon-hex, as Consul prints serials.
    var serial = ""
    var publicKeyPEM = ""
    var publicKeyAlgorithm = ""
    var signatureAlgorithm = ""

    static func read(_ pem: String) async throws -> OpenSSLCertificateView {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("certificate.pem")
        try pem.write(to: file, atomically: true, encoding: .utf8)
        let text = try await runCommand("/usr/bin/openssl", ["x509", "-in", file.path, "-noout", "-text", "-nameopt", "RFC2253",
                                                             "-subject", "-issuer", "-serial", "-pubkey"])
        #expect(text.status == 0, "\(text.output)")
        var view = OpenSSLCertificateView()
        let lines = text.output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var index = 0
        var inPublicKey = false
        while index < lines.count {
            let line = lines[index]
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("X509v3 "), trimmed != "X509v3 extensions:", let colon = trimmed.firstIndex(of: ":") {
                let name = String(trimmed[trimmed.index(trimmed.startIndex, offsetBy: 7)..<colon])
                let critical = trimmed[colon...].contains("critical")
                let value = index + 1 < lines.count ? lines[index + 1].trimmingCharacters(in: .whitespaces) : ""
                view.extensions[name] = Extension(critical: critical, value: value)
                index += 2
                continue
            }
            if line.hasPrefix("subject=") { view.subject = String(line.dropFirst("subject=".count)) }
            if line.hasPrefix("issuer=") { view.issuer = String(line.dropFirst("issuer=".count)) }
            if line.hasPrefix("serial=") {
                var digits = line.dropFirst("serial=".count).lowercased()
                if digits.count % 2 == 1 { digits = "0" + digits }
                view.serial = stride(from: 0, to: digits.count, by: 2).map { offset -> String in
                    let start = digits.index(digits.startIndex, offsetBy: offset)
                    return String(digits[start..<digits.index(start, offsetBy: 2)])
                }.joined(separator: ":")
            }
            if trimmed.hasPrefix("Public Key Algorithm: ") { view.publicKeyAlgorithm = String(trimmed.dropFirst("Public Key Algorithm: ".count)) }
            if trimmed.hasPrefix("Signature Algorithm: ") { view.signatureAlgorithm = String(trimmed.dropFirst("Signature Algorithm: ".count)) }
            if line == "-----BEGIN PUBLIC KEY-----" { inPublicKey = true }
            if inPublicKey { view.publicKeyPEM += line + "\n" }
            if line == "-----END PUBLIC KEY-----" { inPublicKey = false }
            index += 1
        }
        return view
    }
}
