import Foundation
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// Every peer that must not get in, driven by the real `openssl s_client`, `curl` or raw TCP.
/// Each case asserts a clear audit line AND that the local service saw nothing at all.
@Suite("Refusals", .serialized)
struct RefusalTests {
    struct BadClient: CustomTestStringConvertible, Sendable {
        let name: String
        let certificate: String?
        var extraArguments: [String] = []
        /// A fragment the handshake_rejected reason must contain.
        let reasonContains: String
        var testDescription: String { name }
    }

    static let badClients: [BadClient] = [
        BadClient(name: "client from another CA", certificate: "other-backup-agent", reasonContains: "unable to get local issuer certificate"),
        BadClient(name: "wrong trust domain", certificate: "wrong-td", reasonContains: "trust domain"),
        BadClient(name: "expired", certificate: "expired", reasonContains: "certificate has expired"),
        BadClient(name: "not yet valid", certificate: "not-yet-valid", reasonContains: "not yet valid"),
        BadClient(name: "missing clientAuth EKU", certificate: "no-client-auth", reasonContains: "purpose"),
        BadClient(name: "two URI SANs", certificate: "two-uris", reasonContains: "2 URI SANs"),
        BadClient(name: "no URI SAN", certificate: "no-uri", reasonContains: "no URI SAN"),
        BadClient(name: "CA:TRUE leaf", certificate: "ca-true-leaf", reasonContains: "CA"),
        BadClient(name: "no client certificate", certificate: nil, reasonContains: "certificate"),
        BadClient(name: "TLS 1.1 client", certificate: "backup-agent",
                  extraArguments: ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], reasonContains: "protocol"),
    ]

    @Test("Refused at the handshake, nothing reaches the local service", arguments: badClients)
    func refusedClient(_ client: BadClient) async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            var arguments = ["openssl", "s_client", "-connect", "127.0.0.1:\(mesh.publicPort)",
                             "-CAfile", TestCertificates.path("ca.pem"), "-quiet"]
            if let certificate = client.certificate {
                arguments += ["-cert", TestCertificates.path("\(certificate).pem"), "-key", TestCertificates.path("\(certificate).key")]
            }
            let run = try await ProcessRunner.run(arguments + client.extraArguments, input: Data("snapshot bytes\n".utf8), timeout: 10)
            #expect(!run.output.contains("snapshot bytes"))
            let rejected = await eventually { mesh.storageAudit.events.contains { $0.kind == .handshakeRejected } }
            #expect(rejected, "no handshake_rejected audit line; s_client said: \(run.output)")
            let reason = mesh.storageAudit.events.first { $0.kind == .handshakeRejected }?.reason ?? ""
            #expect(reason.contains(client.reasonContains), "reason was: \(reason)")
            #expect(!mesh.storageAudit.events.contains { $0.kind == .authorization })
            #expect(mesh.backend.connections == 0)
            #expect(mesh.backend.bytesReceived == 0)
        }
    }

    @Test("An oversized client certificate chain (> 32 KB) is refused before any verification work")
    func oversizedChain() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            // One self-signed certificate padded past 32 KB with a comment extension: no chain
            // deduplication on the client side can shrink it.
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("big-chain-\(getpid())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let chain = "\(directory)/big.pem"
            let generated = try await ProcessRunner.run([
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                "-subj", "/CN=padding", "-keyout", "\(directory)/big.key", "-out", chain,
                "-addext", "nsComment=" + String(repeating: "A", count: 40_000),
            ], timeout: 20)
            #expect(generated.status == 0, "\(generated.output)")
            #expect((try FileManager.default.attributesOfItem(atPath: chain)[.size] as? Int ?? 0) > TLSContext.maxPeerCertificateListBytes)
            let run = try await ProcessRunner.run([
                "openssl", "s_client", "-connect", "127.0.0.1:\(mesh.publicPort)", "-quiet",
                "-cert", TestCertificates.path("backup-agent.pem"), "-key", TestCertificates.path("backup-agent.key"),
                "-cert_chain", chain,
            ], input: Data("x\n".utf8), timeout: 5)
            _ = run
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .handshakeRejected } })
            let reason = mesh.storageAudit.events.first { $0.kind == .handshakeRejected }?.reason ?? ""
            #expect(reason.contains("excessive message size") || reason.contains("too long"), "reason: \(reason)")
            #expect(mesh.backend.connections == 0)
        }
    }

    @Test("A slowloris client dribbling its ClientHello is cut at the handshake timeout")
    func slowloris() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, handshakeTimeoutMs: 500)
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.publicPort)
            socket.setReceiveTimeout(seconds: 5)
            let started = ContinuousClock.now
            // A TLS record header announcing a large ClientHello, then one byte every 100 ms.
            let cut = await onThread { () -> Bool in
                guard socket.send([0x16, 0x03, 0x01, 0x02, 0x00]) else { return true }
                for _ in 0..<300 {
                    usleep(100_000)
                    if !socket.send([0x01]) { return true }
                    var probe = [UInt8](repeating: 0, count: 16)
                    let flags = Int32(MSG_DONTWAIT)
                    let count = probe.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, flags) }
                    if count == 0 || (count < 0 && errno != EAGAIN) { return true }
                }
                return false
            }
            let elapsed = ContinuousClock.now - started
            // Cut although it kept making progress: only the handshake timeout (500 ms) does that.
            // The bound is a margin for a loaded machine, far under the 30 s the dribble would last.
            #expect(cut, "the connection was still open after 30 s")
            #expect(elapsed < .seconds(15), "cut after \(elapsed)")
            let rejected = try #require(mesh.storageAudit.events.first { $0.kind == .handshakeRejected })
            #expect(rejected.reason == "handshake timed out")
            #expect(mesh.backend.connections == 0)
        }
    }

    @Test("Plaintext bytes to the TLS port are refused", arguments: ["GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\u{0}\u{1}garbage\u{ff}\r\n\r\n"])
    func plaintextRefused(_ payload: String) async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.publicPort)
            socket.setReceiveTimeout(seconds: 30)
            socket.send(Array(payload.utf8))
            let reply = await onThread { socket.receiveAll(keepingPrefix: 1 << 16) }
            #expect(!String(decoding: reply.prefix, as: UTF8.self).contains("HTTP/1.1 200"))
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .handshakeRejected } })
            #expect(mesh.backend.connections == 0)
        }
    }

    @Test("A verified identity without an allowing intention is refused by the intentions")
    func identityNotAllowed() async throws {
        let intentions = [
            Intention(destinationName: "storage", sourceName: "backup-agent", action: .allow),
            Intention(destinationName: "storage", sourceName: "restore-agent", action: .deny),
        ]
        let mesh = try await MeshFixture.start(backend: .echo, agentCertificate: "restore-agent", intentions: intentions)
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 30)
            socket.send(Array("restore please\n".utf8))
            socket.shutdownWrite()
            let reply = await onThread { socket.receiveAll() }
            #expect(reply.count == 0)
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .authorization } })
            let decision = try #require(mesh.storageAudit.events.first { $0.kind == .authorization })
            #expect(decision.decision == "deny")
            #expect(decision.source?.hasSuffix("/svc/restore-agent") == true)
            #expect(decision.reason?.contains("restore-agent") == true)
            #expect(mesh.backend.connections == 0)
        }
    }

    @Test("Default deny refuses an identity no intention mentions")
    func defaultDeny() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, agentCertificate: "restore-agent")
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 30)
            socket.send(Array("x".utf8))
            _ = await onThread { socket.receiveAll() }
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .authorization } })
            let decision = try #require(mesh.storageAudit.events.first { $0.kind == .authorization })
            #expect(decision.decision == "deny")
            #expect(decision.reason == "default policy")
            #expect(mesh.backend.connections == 0)
        }
    }

    @Test("Upstream refuses a server that is not the expected destination", arguments: [
        ("storage-impostor", "not the expected"), ("no-server-auth", "purpose"),
    ])
    func upstreamRefusesWrongServer(_ certificate: String, _ reasonContains: String) async throws {
        let mesh = try await MeshFixture.start(backend: .echo, storageCertificate: certificate)
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 5)
            socket.send(Array("snapshot for the real storage\n".utf8))
            let reply = await onThread { socket.receiveAll() }
            #expect(reply.count == 0)
            #expect(!reply.cleanEOF, "the caller sees a reset, not a clean end")
            #expect(await eventually { mesh.agentAudit.events.contains { $0.kind == .upstreamFailed } })
            let failure = try #require(mesh.agentAudit.events.first { $0.kind == .upstreamFailed })
            #expect(failure.reason?.contains(reasonContains) == true, "reason was: \(failure.reason ?? "")")
            #expect(mesh.backend.connections == 0)
        }
    }

    @Test("Intermediates the peer sends are used; without them the chain does not verify")
    func intermediates() async throws {
        let withChain = try await MeshFixture.start(backend: .echo, storageCertificate: "int-storage")
        let socket = try BlockingSocket(port: withChain.upstreamPort)
        socket.send(Array("via intermediate\n".utf8))
        socket.shutdownWrite()
        let reply = await onThread { socket.receiveAll() }
        #expect(reply.count == "via intermediate\n".utf8.count)
        await withChain.stop()

        let leafOnly = try await MeshFixture.start(backend: .echo, storageCertificate: "int-storage-leaf-only", storageKey: "int-storage")
        try await withTeardown({ await leafOnly.stop() }) {
            let refused = try BlockingSocket(port: leafOnly.upstreamPort)
            refused.setReceiveTimeout(seconds: 5)
            refused.send(Array("x".utf8))
            #expect(await onThread { refused.receiveAll() }.count == 0)
            #expect(await eventually { leafOnly.agentAudit.events.contains { $0.kind == .upstreamFailed } })
        }
    }

    @Test("Every listed root is trusted (CA rotation): a leaf from the second root is accepted only when that root is listed")
    func severalRoots() async throws {
        let trusting = try await MeshFixture.start(backend: .echo, storageRoots: "roots.pem", agentCertificate: "backup-agent-ca2", agentRoots: "roots.pem")
        let socket = try BlockingSocket(port: trusting.upstreamPort)
        socket.send(Array("rotated\n".utf8))
        socket.shutdownWrite()
        #expect(await onThread { socket.receiveAll() }.count == "rotated\n".utf8.count)
        await trusting.stop()

        let notTrusting = try await MeshFixture.start(backend: .echo, storageRoots: "ca.pem", agentCertificate: "backup-agent-ca2", agentRoots: "roots.pem")
        try await withTeardown({ await notTrusting.stop() }) {
            let refused = try BlockingSocket(port: notTrusting.upstreamPort)
            refused.setReceiveTimeout(seconds: 5)
            refused.send(Array("x".utf8))
            _ = await onThread { refused.receiveAll() }
            #expect(await eventually { notTrusting.storageAudit.events.contains { $0.kind == .handshakeRejected } })
            #expect(notTrusting.backend.connections == 0)
        }
    }
}

/// Third-party clients straight at the public listener.
@Suite("Third-party clients", .serialized)
struct ThirdPartyClientTests {
    @Test("curl with a client certificate gets the backend's answer; without one it is refused")
    func curl() async throws {
        let mesh = try await MeshFixture.start(backend: .http)
        try await withTeardown({ await mesh.stop() }) {
            let url = "https://127.0.0.1:\(mesh.publicPort)/snapshots"
            // -k: our leaf has no DNS/IP SAN (identity is the SPIFFE URI); chain verification of the
            // server is covered by the s_client test below.
            let ok = try await ProcessRunner.run(["curl", "-sS", "-k", "--max-time", "10",
                                            "--cert", TestCertificates.path("backup-agent.pem"),
                                            "--key", TestCertificates.path("backup-agent.key"), url, url])
            #expect(ok.status == 0, "curl failed: \(ok.output)")
            #expect(ok.output == "backup-sidecar-ok\nbackup-sidecar-ok\n")
            #expect(mesh.backend.connections == 1, "two requests on one keep-alive connection")

            let refused = try await ProcessRunner.run(["curl", "-sS", "-k", "--max-time", "10", url])
            #expect(refused.status != 0)
            #expect(!refused.output.contains("backup-sidecar-ok"))
            #expect(mesh.backend.connections == 1)
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .handshakeRejected } })
        }
    }

    @Test("openssl s_client verifies our chain and exchanges data")
    func sClient() async throws {
        let mesh = try await MeshFixture.start(backend: .http)
        try await withTeardown({ await mesh.stop() }) {
            let run = try await ProcessRunner.run([
                "openssl", "s_client", "-connect", "127.0.0.1:\(mesh.publicPort)", "-CAfile", TestCertificates.path("ca.pem"),
                "-verify_return_error", "-cert", TestCertificates.path("backup-agent.pem"),
                "-key", TestCertificates.path("backup-agent.key"), "-ign_eof",
            ], input: Data("GET / HTTP/1.0\r\n\r\n".utf8), timeout: 10)
            #expect(run.output.contains("Verify return code: 0 (ok)"), "\(run.output)")
            #expect(run.output.contains("backup-sidecar-ok"))
            #expect(run.output.contains("TLSv1.3"))
            let allowed = mesh.storageAudit.events.first { $0.kind == .authorization }
            #expect(allowed?.decision == "allow")
        }
    }
}
