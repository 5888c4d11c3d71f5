import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// The L7 boundary with real storage services behind it, as issue 16's findings were made:
/// nginx with WebDAV (every method on, so only the sidecar protects the files) and restic
/// against `rclone serve restic` with deploy/'s restic policy.
@Suite("L7 boundary with real services", .serialized)
struct ThirdPartyBoundaryTests {
    static func policy(_ file: String) throws -> [Intention] {
        try IntentionsFile.load(path: TestCertificates.repositoryRoot.appendingPathComponent("deploy/\(file)").path)
    }

    /// Sends raw bytes through the agent's upstream listener; what came back until the close.
    static func exchange(_ text: String, port: Int) async -> String {
        await onThread { HTTP1SmugglingTests.exchange(Array(text.utf8), port: port) }
    }

    @Test("nginx WebDAV behind deploy/intentions-l7.json: smuggled DELETEs and path tricks change no file")
    func nginxFindings() async throws {
        let nginx = try await NginxWebDAV()
        defer { nginx.stop() }
        let (storage, audit) = try await MeshFixture.startStorage(backendPort: nginx.port,
                                                                  credentials: try TestCertificates.credentials("storage"),
                                                                  intentions: try Self.policy("intentions-l7.json"), protocol: "http")
        try await withTeardown({ await storage.stop() }) {
            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                              storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
            await withTeardown({ await agent.stop() }) {
                let port = agent.boundAddress(of: "upstream:storage")!.port!

                let created = await Self.exchange("PUT /repository/snap HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\nsnapshot", port: port)
                #expect(created.hasPrefix("HTTP/1.1 201"), "\(created.prefix(100))")
                #expect(nginx.exists("/repository/snap"))

                // Finding 1, as found, and its family: a DELETE hidden where nginx and a lenient reader
                // disagree on where a body ends.
                let hidden = "0\r\n\r\nDELETE /repository/snap HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                let chunk = String(hidden.utf8.count, radix: 16) + "\r\n" + hidden + "\r\n0\r\n\r\n"
                let smuggling = [
                    "GET /repository/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n" + chunk,
                    "GET /repository/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunk,
                    "GET /repository/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" + chunk,
                    "GET /repository/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
                    "TRACE /repository/ HTTP/1.1\r\nHost: x\r\nContent-Length: \(hidden.utf8.count)\r\n\r\n" + hidden,
                    "GET /repository/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: \(hidden.utf8.count)\r\n\r\n" + hidden,
                    "GET /repository/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunk,
                ]
                for request in smuggling {
                    _ = await Self.exchange(request, port: port)
                    #expect(nginx.exists("/repository/snap"), "the snapshot survived \(request.prefix(80).debugDescription)")
                }
                // Finding 2: targets nginx normalises after our decision.
                for (request, outside) in [
                    ("PUT /repository/../outside HTTP/1.1", "/outside"),
                    ("PUT /repository/%2e%2e/outside2 HTTP/1.1", "/outside2"),
                    ("PUT /repository/.%2E/outside3 HTTP/1.1", "/outside3"),
                    ("PUT /repository/x%2F..%2F..%2Foutside4 HTTP/1.1", "/outside4"),
                    ("PUT http://storage/repository/../outside5 HTTP/1.1", "/outside5"),
                    ("MOVE /repository/snap HTTP/1.1", "/moved"),
                ] {
                    let reply = await Self.exchange(request + "\r\nHost: x\r\nDestination: http://x/moved\r\nContent-Length: 5\r\nConnection: close\r\n\r\nowned",
                                                    port: port)
                    #expect(!nginx.exists(outside), "\(request) created \(outside): \(reply.prefix(60))")
                }
                for request in ["DELETE http://storage/repository/snap HTTP/1.1", "DELETE /repository/./snap HTTP/1.1", "DELETE /%72epository/snap HTTP/1.1"] {
                    _ = await Self.exchange(request + "\r\nHost: x\r\nConnection: close\r\n\r\n", port: port)
                }
                #expect(nginx.exists("/repository/snap"), "the snapshot survived every DELETE")
                // What was forwarded is what was decided: the normalised PUT landed inside the repository.
                #expect(nginx.exists("/outside") == false && nginx.exists("/repository/outside") == false)
                #expect(!audit.events.contains { $0.kind == .httpRequest && $0.decision == "allow" && $0.method == "DELETE" })
            }
        }
    }

    /// Finding 13: restic backs up, restores and cannot prune through the mesh (restic 0.14
    /// retries each refused DELETE for about 45 s before giving up, hence the long time limit).
    @Test("restic through both sidecars with deploy/intentions-restic.json: backup and restore work, forget --prune is refused",
          .timeLimit(.minutes(5)))
    func resticAppendOnly() async throws {
        let server = try await RcloneRestic()
        defer { server.stop() }
        let (storage, audit) = try await MeshFixture.startStorage(backendPort: server.port,
                                                                  credentials: try TestCertificates.credentials("storage"),
                                                                  intentions: try Self.policy("intentions-restic.json"), protocol: "http")
        try await withTeardown({ await storage.stop() }) {
            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                              storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
            try await withTeardown({ await agent.stop() }) {
                let port = agent.boundAddress(of: "upstream:storage")!.port!

                let work = try scratchDirectory("restic")
                let data = "\(work)/data", restored = "\(work)/restored"
                try FileManager.default.createDirectory(atPath: "\(data)/nested", withIntermediateDirectories: true)
                for (index, size) in [1 << 20, 3 << 20, 17, 0].enumerated() {
                    FileManager.default.createFile(atPath: "\(data)/\(index == 1 ? "nested/" : "")file-\(index)", contents: Data(secureRandomBytes(size)))
                }
                func restic(_ arguments: [String]) async throws -> ProcessRunner.Result {
                    try await ProcessRunner.run(["env", "RESTIC_PASSWORD=mesh-test", "RESTIC_CACHE_DIR=\(work)/cache",
                                                 "restic", "--quiet", "-r", "rest:http://127.0.0.1:\(port)/backups/"] + arguments,
                                                timeout: 240)
                }
                let initialized = try await restic(["init"])
                try #require(initialized.status == 0, "\(initialized.output)")
                for round in 0..<2 {
                    FileManager.default.createFile(atPath: "\(data)/round-\(round)", contents: Data(secureRandomBytes(4096)))
                    let backup = try await restic(["backup", data])
                    try #require(backup.status == 0, "\(backup.output)")
                }
                let restore = try await restic(["restore", "latest", "--target", restored])
                #expect(restore.status == 0, "\(restore.output)")
                let compared = try await ProcessRunner.run(["diff", "-r", data, restored + data])
                #expect(compared.status == 0, "restored tree differs: \(compared.output)")

                let prune = try await restic(["forget", "--keep-last", "1", "--prune"])
                #expect(prune.status != 0, "forget --prune must fail: \(prune.output.suffix(400))")
                #expect(prune.output.contains("403"), "\(prune.output.suffix(400))")
                let snapshots = try await restic(["snapshots", "--json"])
                #expect(snapshots.status == 0)
                #expect(snapshots.output.components(separatedBy: "\"short_id\"").count - 1 == 2, "both snapshots are still there")
                let check = try await restic(["check"])
                #expect(check.status == 0, "the repository is intact: \(check.output.suffix(300))")

                let decisions = audit.events.filter { $0.kind == .httpRequest }
                #expect(decisions.contains { $0.method == "DELETE" && $0.decision == "deny" && $0.path?.contains("/snapshots/") == true })
                #expect(decisions.contains { $0.method == "DELETE" && $0.decision == "allow" && $0.path?.contains("/locks/") == true },
                        "restic removes its own locks")
                #expect(!decisions.contains { $0.method == "DELETE" && $0.decision == "allow" && $0.path?.contains("/locks/") != true })
            }
        }
    }
}
