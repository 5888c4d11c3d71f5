import Foundation
import NIOConcurrencyHelpers
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// L7 intentions through both sidecars with curl, against an HTTP/1.1 backup repository.
@Suite("L7 HTTP enforcement", .serialized)
struct L7IntegrationTests {
    /// The ransomware-resistant policy from deploy/: backup-agent may create and read but never
    /// delete; restore-agent may only read; everyone else is denied.
    @Test("Append-only: backup-agent uploads and reads, its DELETE gets 403, and the same connection keeps working")
    func appendOnly() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, intentions: L7Fixture.backupPolicy, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let lines = try await L7Fixture.curl(mesh.upstreamPort, [
                ["-X", "PUT", "--data-binary", "snapshot-1", "URL/repository/snap-1"],
                ["URL/repository/snap-1"],
                ["-X", "DELETE", "URL/repository/snap-1"],
                ["-I", "URL/repository/"],
                ["-X", "POST", "--data-binary", "index", "URL/repository/index"],
            ])
            try #require(lines.count == 5, "\(lines)")
            #expect(lines[0].status == "200" && lines[0].connects == "1" && lines[0].body.hasPrefix("PUT /repository/snap-1 10 "), "\(lines[0])")
            #expect(lines[1].status == "200" && lines[1].connects == "0" && lines[1].body.hasPrefix("GET /repository/snap-1 0 "),
                    "same connection: \(lines[1])")
            #expect(lines[2].status == "403" && lines[2].connects == "0" && lines[2].body.hasPrefix("denied by intention"), "\(lines[2])")
            #expect(lines[3].status == "200" && lines[3].connects == "0", "\(lines[3])")
            #expect(lines[4].status == "200" && lines[4].connects == "0" && lines[4].body.hasPrefix("POST /repository/index 5 "),
                    "the connection still works after the 403: \(lines[4])")
            // The DELETE never reached the repository.
            #expect(!mesh.backend.requests.contains { $0.hasPrefix("DELETE") })
            #expect(mesh.backend.requests.count == 4)
            #expect(mesh.backend.connections == 1)
            let denied = try #require(mesh.storageAudit.events.first { $0.kind == .httpRequest && $0.decision == "deny" })
            #expect(denied.method == "DELETE")
            #expect(denied.path == "/repository/snap-1")
            #expect(denied.reason?.contains("permission #1") == true)
            #expect(denied.source?.hasSuffix("/svc/backup-agent") == true)
        }
    }

    @Test("restore-agent may only read; identities without an intention never get a connection")
    func restoreReadOnly() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, intentions: L7Fixture.backupPolicy, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let (restore, _) = try await MeshFixture.startAgent(certificate: "restore-agent", storagePort: mesh.publicPort)
            try await withTeardown({ await restore.stop() }) {
                let lines = try await L7Fixture.curl(restore.boundAddress(of: "upstream:storage")!.port!, [
                    ["URL/repository/snap-1"],
                    ["-X", "PUT", "--data-binary", "ransom", "URL/repository/snap-1"],
                    ["-X", "DELETE", "URL/repository/snap-1"],
                    ["-I", "URL/repository/snap-1"],
                ])
                #expect(lines.map(\.status) == ["200", "403", "403", "200"], "\(lines)")
                #expect(lines.map(\.connects) == ["1", "0", "0", "0"], "\(lines)")
                #expect(mesh.backend.requests == ["GET /repository/snap-1", "HEAD /repository/snap-1"])

                // billing has no intention but the `*` deny: refused at the handshake, no HTTP at all.
                let (billing, _) = try await MeshFixture.startAgent(certificate: "storage-impostor", storagePort: mesh.publicPort)
                try await withTeardown({ await billing.stop() }) {
                    let refused = try await ProcessRunner.run(["curl", "-sS", "--max-time", "10",
                                                               "http://127.0.0.1:\(billing.boundAddress(of: "upstream:storage")!.port!)/repository/"])
                    #expect(refused.status != 0)
                    #expect(mesh.backend.requests.count == 2)
                }
            }
        }
    }

    @Test("Header rules, including Invert")
    func headerRules() async throws {
        let intentions = try IntentionsFile.decode(Data("""
            [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
              {"Action": "deny", "HTTP": {"PathPrefix": "/", "Header": [{"Name": "X-Backup-Job", "Present": true, "Invert": true}]}},
              {"Action": "deny", "HTTP": {"PathPrefix": "/", "Header": [{"Name": "X-Backup-Job", "Prefix": "manual-"}]}},
              {"Action": "allow", "HTTP": {"PathPrefix": "/repository/", "Header": [{"Name": "X-Backup-Job", "Regex": "nightly-[0-9]+"}]}}
            ]}]}]
            """.utf8), source: "headers.json")
        let mesh = try await MeshFixture.start(backend: .repository, intentions: intentions, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let lines = try await L7Fixture.curl(mesh.upstreamPort, [
                ["URL/repository/a"],                                              // no job header: inverted Present denies
                ["-H", "X-Backup-Job: manual-7", "URL/repository/a"],              // manual jobs denied
                ["-H", "X-Backup-Job: nightly-42", "URL/repository/a"],            // allowed
                ["-H", "X-Backup-Job: nightly-x", "URL/repository/a"],             // no permission matches: default deny
            ])
            #expect(lines.map(\.status) == ["403", "403", "200", "403"], "\(lines)")
            #expect(mesh.backend.requests == ["GET /repository/a"])
        }
    }

    /// The storage sidecar (where the L7 filter holds request bodies) is the real binary, so
    /// its peak memory is its own: the suite's other tests run beside this one in-process.
    @Test("A 100 MiB chunked upload streams through with bounded memory")
    func chunkedUpload() async throws {
        let backend = try await TestBackend(.repository, group: testGroup)
        try await withTeardown({ await backend.stop() }) {
            let (port, service) = SidecarBinary.storageService("chunked-\(backend.port).json", appPort: backend.port, http: true)
            let intentions = TestCertificates.repositoryRoot.appendingPathComponent("deploy/intentions-l7.json").path
            let storage = try SidecarProcess(["run", "--admin-bind", "off", "--service-file", service, "--intentions-file", intentions,
                                              "--drain-timeout", "1s"] + SidecarBinary.certs(), logName: "chunked-\(port).log")
            defer { _ = storage }
            #expect(await eventually { (try? BlockingSocket(port: port)) != nil })
            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: port)
            try await withTeardown({ await agent.stop() }) {
                let upstreamPort = try #require(agent.boundAddress(of: "upstream:storage")?.port)
                #expect(await eventuallyEchoes(http: upstreamPort), "the sidecar serves")
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("upload-\(getpid()).bin").path
                let data = Data(secureRandomBytes(100 << 20))
                FileManager.default.createFile(atPath: file, contents: data)
                defer { try? FileManager.default.removeItem(atPath: file) }
                let digest = SHA256Digest()
                data.withUnsafeBytes { digest.update($0) }
                let expected = digest.finalizeHex()

                let pid = storage.process.processIdentifier
                let baseline = processResidentBytes(pid)
                #expect(resetPeakResidentBytes(pid), "the kernel's peak RSS can be reset for our own child")
                let lines = try await L7Fixture.curl(upstreamPort, [
                    ["-H", "Transfer-Encoding: chunked", "-T", file, "URL/repository/big.bin"],
                ])
                let grown = processPeakResidentBytes(pid) - baseline
                #expect(lines.first?.status == "200", "\(lines)")
                #expect(lines.first?.body == "PUT /repository/big.bin \(100 << 20) \(expected)", "\(lines)")
                #expect(grown < 64 << 20, "RSS grew by \(grown >> 20) MiB during a 100 MiB upload")
                #expect(await storage.terminate().status == 0)
            }
        }
    }

    @Test("HTTP/2 with prior knowledge is refused on an L7 listener, with an audit line")
    func http2Refused() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, intentions: L7Fixture.backupPolicy, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let run = try await ProcessRunner.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                                                   "http://127.0.0.1:\(mesh.upstreamPort)/repository/a"])
            #expect(run.status != 0)
            #expect(mesh.backend.requests.isEmpty)
            #expect(await eventually {
                mesh.storageAudit.events.contains { $0.kind == .httpRequest && $0.decision == "deny" }
            }, "events: \(mesh.storageAudit.events.map(\.jsonLine))")
        }
    }

    @Test("Pipelined requests are answered in order, a 403 among them included")
    func pipelining() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, intentions: L7Fixture.backupPolicy, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 10)
            let requests = "GET /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n"
                + "DELETE /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n"
                + "PUT /repository/b HTTP/1.1\r\nHost: storage\r\nContent-Length: 3\r\n\r\nabc"
                + "GET /repository/b HTTP/1.1\r\nHost: storage\r\nConnection: close\r\n\r\n"
            socket.send(Array(requests.utf8))
            let reply = await onThread { socket.receiveAll(keepingPrefix: 1 << 16) }
            let text = String(decoding: reply.prefix, as: UTF8.self)
            let statuses = text.components(separatedBy: .newlines).filter { $0.hasPrefix("HTTP/1.1 ") }
            #expect(statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"], "\(text)")
            #expect(text.contains("GET /repository/a 0"))
            #expect(text.contains("PUT /repository/b 3"))
            #expect(mesh.backend.requests == ["GET /repository/a", "PUT /repository/b", "GET /repository/b"])
        }
    }

    @Test("Expect: 100-continue: an allowed upload proceeds, a denied one is answered 403 without its body")
    func expectContinue() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, intentions: L7Fixture.backupPolicy, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let (restore, _) = try await MeshFixture.startAgent(certificate: "restore-agent", storagePort: mesh.publicPort)
            try await withTeardown({ await restore.stop() }) {
                let allowed = try await L7Fixture.curl(mesh.upstreamPort, [
                    ["-H", "Expect: 100-continue", "--expect100-timeout", "0.2", "--data-binary", "snapshot-body", "URL/repository/c"],
                ])
                #expect(allowed.first?.status == "200" && allowed.first?.body.hasPrefix("POST /repository/c 13 ") == true, "\(allowed)")

                let denied = try await L7Fixture.curl(restore.boundAddress(of: "upstream:storage")!.port!, [
                    ["-H", "Expect: 100-continue", "--expect100-timeout", "5", "-X", "PUT", "--data-binary", "overwrite", "URL/repository/c"],
                ])
                #expect(denied.first?.status == "403", "\(denied)")
                #expect(mesh.backend.requests == ["POST /repository/c"])
            }
        }
    }

    @Test("An L4 intention still works on an L7 listener")
    func l4OnL7() async throws {
        let mesh = try await MeshFixture.start(backend: .repository, protocol: "http")
        try await withTeardown({ await mesh.stop() }) {
            let lines = try await L7Fixture.curl(mesh.upstreamPort, [["-X", "DELETE", "URL/anything"]])
            #expect(lines.first?.status == "200", "\(lines)")
            let decision = try #require(mesh.storageAudit.events.first { $0.kind == .httpRequest })
            #expect(decision.reason?.contains("default/default/backup-agent -> default/storage") == true)
        }
    }
}
