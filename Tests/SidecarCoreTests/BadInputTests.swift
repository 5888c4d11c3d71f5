import Foundation
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport

/// Floods and oversized input: refused, bounded, and the service stays usable for real peers.
@Suite("Bad input", .serialized)
struct BadInputTests {
    @Test("A flood of half-open connections past max_connections: a real peer gets through at once; the flood is cut at the handshake timeout")
    func halfOpenFlood() async throws {
        // A handshake timeout far above how long a loaded machine takes to serve one peer: were
        // half-open handshakes holding max_connections slots, the peer would wait all of it.
        let mesh = try await MeshFixture.start(backend: .echo, handshakeTimeoutMs: 30_000) {
            $0.maxConnections = 16
            $0.firstByteTimeoutMs = 30_000  // silent connections are cut at 30 s, not the usual 5
        }
        try await withTeardown({ await mesh.stop() }) {
            // 48 TCP connections that never send a byte: three times the listener's limit.
            let flood = try (0..<48).map { _ in try BlockingSocket(port: mesh.publicPort) }
            let started = ContinuousClock.now
            #expect(await echoRoundTrip(port: mesh.upstreamPort), "a legitimate peer still gets its transfer through")
            let waited = ContinuousClock.now - started
            #expect(waited < .seconds(25), "served after \(waited), not behind the flood's handshake timeout")
            #expect(mesh.backend.connections == 1, "nothing from the flood reached the app")
            // Handshaking connections no longer hold max_connections slots; they are still cut at
            // the handshake timeout.
            #expect(await eventually(timeout: 120) {
                mesh.storageAudit.events.filter { $0.kind == .handshakeRejected && $0.reason?.hasPrefix("handshake timed out") == true }.count >= 48
            }, "every flood connection is cut at the handshake timeout")
            _ = flood
        }
    }

    @Test("Oversized HTTP request headers on an L7 listener: refused, nothing reaches the app, the sidecar keeps serving")
    func oversizedHeaders() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, intentions: L7Fixture.backupPolicy, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            // 200 KB of header, from a file (too long for a command-line argument).
            let headers = FileManager.default.temporaryDirectory.appendingPathComponent("huge-header-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: headers) }
            try ("X-Padding: " + String(repeating: "a", count: 200_000) + "\n").write(toFile: headers, atomically: true, encoding: .utf8)
            let run = try await ProcessRunner.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                                                   "-H", "@\(headers)", "http://127.0.0.1:\(mesh.upstreamPort)/repository/x"])
            #expect(run.output.hasPrefix("431"), "curl: \(run.output.prefix(200))")
            #expect(await eventually { mesh.storageAudit.events.contains {
                $0.kind == .httpRequest && $0.decision == "deny" && $0.reason?.contains("request head larger than 65536 bytes") == true
            } }, "an audit line says why")
            #expect(mesh.backend.requests.isEmpty, "the oversized request never reached the repository")
            let ok = try await L7Fixture.curl(mesh.upstreamPort, [["URL/repository/after"]])
            #expect(ok.first?.status == "200", "a normal request afterwards works: \(ok)")
        }
    }
}
