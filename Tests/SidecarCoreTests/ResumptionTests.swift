import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// TLS 1.3 session resumption between our sidecars: faster reconnects that never bypass
/// identity checks or intentions, and never survive new keys or new trust. Raw mode: with the
/// mux, these connections would all ride one pooled handshake.
@Suite("TLS session resumption", .serialized)
struct ResumptionTests {
    /// The storage sidecar's authorization lines: (decision, resumed) in order.
    static func handshakes(_ mesh: MeshFixture) -> [(String, Bool)] {
        mesh.storageAudit.events.filter { $0.kind == .authorization }.map { ($0.decision ?? "?", $0.tlsResumed == true) }
    }

    @Test("The second connection to an instance resumes; both sides log it; the peer is still the verified identity")
    func resumes() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        await withTeardown({ await mesh.stop() }) {
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await eventually { Self.handshakes(mesh).count == 3 })
            #expect(Self.handshakes(mesh).map(\.1) == [false, true, true])
            let upstream = mesh.agentAudit.events.filter { $0.kind == .upstreamConnected }
            #expect(upstream.map { $0.tlsResumed == true } == [false, true, true])
            let sources = mesh.storageAudit.events.filter { $0.kind == .authorization }.map(\.source)
            #expect(Set(sources).count == 1 && sources.first??.hasSuffix("/svc/backup-agent") == true)
            #expect(mesh.storageAudit.events.last { $0.kind == .authorization }?.jsonLine.contains(#""tls_resumed":true"#) == true)
        }
    }

    /// The server keeps sessions in its SSL_CTX and sends no new ticket on resumption: one
    /// session serves every later connection (OpenSSL would otherwise mark a used TLS 1.3
    /// session single-use on the client, and each resumption would grow the server's cache).
    @Test("Ten connections in a row: one full handshake, nine resumptions of it; the server caches one session")
    func oneSessionServesLaterConnections() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        try await withTeardown({ await mesh.stop() }) {
            for _ in 0..<10 { #expect(await echoRoundTrip(port: mesh.upstreamPort)) }
            #expect(await eventually { Self.handshakes(mesh).count == 10 })
            #expect(Self.handshakes(mesh).map(\.1) == [false] + Array(repeating: true, count: 9))
            let replaced = mesh.storage.contexts.server
            #expect(replaced.cachedServerSessions == 1)
            #expect(mesh.agent.contexts.client.sessionCache.count == 1)
            // A replaced context may live on with its connections; its sessions do not.
            try mesh.storage.rotateSessionKeys()
            #expect(replaced.cachedServerSessions == 0)
        }
    }

    @Test("A peer refused by the intentions loses its cached session: after the deny is lifted it does a full handshake")
    func refusedPeerLosesSession() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        await withTeardown({ await mesh.stop() }) {
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(mesh.storage.contexts.server.cachedServerSessions == 1)
            mesh.storage.updateIntentions(IntentionSet([Intention(destinationName: "storage", sourceName: "backup-agent", action: .deny)],
                                                       defaultAction: .deny))
            #expect(await echoRoundTrip(port: mesh.upstreamPort) == false)
            #expect(await eventually { mesh.storage.contexts.server.cachedServerSessions == 0 })
            mesh.storage.updateIntentions(IntentionSet(MeshFixture.allowBackupAgent, defaultAction: .deny))
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await eventually { Self.handshakes(mesh).count == 3 })
            #expect(Self.handshakes(mesh).map(\.0) == ["allow", "deny", "allow"])
            #expect(Self.handshakes(mesh).map(\.1) == [false, true, false], "the third was a full handshake")
        }
    }

    @Test("A resumed session is authorized against the current intentions")
    func resumedSessionIsReauthorized() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        await withTeardown({ await mesh.stop() }) {
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            mesh.storage.updateIntentions(IntentionSet([Intention(destinationName: "storage", sourceName: "backup-agent", action: .deny)],
                                                       defaultAction: .deny))
            #expect(await echoRoundTrip(port: mesh.upstreamPort) == false)
            #expect(await eventually { Self.handshakes(mesh).count == 2 })
            let second = Self.handshakes(mesh)[1]
            #expect(second.0 == "deny" && second.1, "resumed, and still refused by the new deny: \(Self.handshakes(mesh))")
            #expect(mesh.backend.connections == 1, "the refused resumption never reached the app")
        }
    }

    @Test("New ticket keys, new certificates or a changed root set: earlier sessions are not resumed")
    func newContextsEndResumption() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        try await withTeardown({ await mesh.stop() }) {
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            try mesh.storage.rotateSessionKeys()
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            // A changed root set (here ca2 added; a removal builds a new context the same way).
            try mesh.storage.updateCredentials(try TestCertificates.credentials("storage", roots: "roots.pem"))
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(await eventually { Self.handshakes(mesh).count == 5 })
            #expect(Self.handshakes(mesh).map(\.1) == [false, true, false, true, false], "\(Self.handshakes(mesh))")
            #expect(Self.handshakes(mesh).allSatisfy { $0.0 == "allow" })
        }
    }

    @Test("openssl s_client -sess_out / -sess_in: the real client resumes too (TLS 1.3), and is authorized again")
    func opensslResumes() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        try await withTeardown({ await mesh.stop() }) {
            let session = FileManager.default.temporaryDirectory.appendingPathComponent("session-\(UUID().uuidString).pem").path
            defer { try? FileManager.default.removeItem(atPath: session) }
            let base = ["openssl", "s_client", "-connect", "127.0.0.1:\(mesh.publicPort)", "-tls1_3",
                        "-cert", TestCertificates.path("backup-agent.pem"), "-key", TestCertificates.path("backup-agent.key"),
                        "-CAfile", TestCertificates.path("ca.pem")]
            // The TLS 1.3 ticket arrives after the handshake and s_client writes -sess_out only once
            // it has it: stdin stays open until the session file has content (at most 30 s).
            func client(_ extra: [String]) async throws -> ProcessRunner.Result {
                let script = "(echo hello; n=0; while [ ! -s \"$0\" ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done) | \"$@\""
                return try await ProcessRunner.run(["sh", "-c", script, session] + base + extra, timeout: 60)
            }
            let first = try await client(["-sess_out", session])
            #expect(first.output.contains("New, TLSv1.3"), "\(first.output)")
            let second = try await client(["-sess_in", session])
            #expect(second.output.contains("Reused, TLSv1.3"), "\(second.output)")
            #expect(await eventually { Self.handshakes(mesh).count == 2 })
            #expect(Self.handshakes(mesh).map(\.1) == [false, true])
            #expect(Self.handshakes(mesh).allSatisfy { $0.0 == "allow" })
        }
    }
}
