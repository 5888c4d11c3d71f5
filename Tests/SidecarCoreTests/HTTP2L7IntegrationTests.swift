import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// L7 intentions on HTTP/2 (protocol http2 / grpc) through both sidecars, with curl and h2load
/// speaking cleartext HTTP/2 with prior knowledge to an HTTP/2 backup repository (NIOHTTP2).
@Suite("HTTP/2 L7 enforcement", .serialized)
struct HTTP2L7IntegrationTests {
    static func start(protocol proto: String = "http2", intentions: [Intention] = L7Fixture.backupPolicy,
                      mux: MuxMode = .prefer) async throws -> MeshFixture {
        try await MeshFixture.start(backend: .repositoryHTTP2, intentions: intentions, protocol: proto, mux: mux)
    }

    /// The filter sits on whatever carries the tunnel: a raw mTLS connection or a mux stream.
    static func expectTransport(_ mesh: MeshFixture, _ mux: MuxMode) {
        #expect(mesh.storageAudit.events.contains { $0.kind == .muxConnected } == (mux == .prefer))
    }

    /// One curl run with HTTP/2 prior knowledge per request: curl 7.88 cannot reuse an h2c
    /// connection (a second request fails with "Error in the HTTP2 framing layer" against any
    /// server), so exchanges on one connection use TestH2Connection, nghttp2's own h2load
    /// and nghttp.
    static func curl(_ port: Int, _ request: [String]) async throws -> L7Fixture.Response {
        let lines = try await L7Fixture.curl(port, [["--http2-prior-knowledge"] + request])
        try #require(lines.count == 1, "\(lines)")
        #expect(lines[0].version == "2", "\(lines[0])")
        return lines[0]
    }

    static func decisions(_ mesh: MeshFixture, _ decision: String) -> [AuditEvent] {
        mesh.storageAudit.events.filter { $0.kind == .httpRequest && $0.decision == decision }
    }

    /// A file of `bytes` for curl -T or h2load -d; the caller removes it.
    static func temporaryFile(_ name: String, _ bytes: [UInt8]) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(getpid()).bin").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        let digest = SHA256Digest()
        digest.update(bytes)
        return digest.finalizeHex()
    }

    @Test("Append-only on one HTTP/2 connection: PUT and GET pass with their bodies, DELETE gets 403, the connection keeps serving",
          arguments: [MuxMode.prefer, .off])
    func appendOnly(_ mux: MuxMode) async throws {
        let mesh = try await Self.start(mux: mux)
        try await withTeardown({ await mesh.stop() }) {
            let connection = try TestH2Connection(port: mesh.upstreamPort)
            let responses = try await onThread {
                Result { try [
                    connection.request("PUT", "/repository/snap-1", body: Array("snapshot-1".utf8)),
                    connection.request("GET", "/repository/snap-1?version=2"),
                    connection.request("DELETE", "/repository/snap-1"),
                    connection.request("HEAD", "/repository/"),
                    connection.request("POST", "/repository/index", body: Array("index".utf8)),
                ] }
            }.get()
            #expect(responses.map(\.status) == ["200", "200", "403", "200", "200"])
            #expect(responses[0].text == "PUT /repository/snap-1 10 \(Self.sha256(Array("snapshot-1".utf8)))\n")
            #expect(responses[1].text.hasPrefix("GET /repository/snap-1?version=2 0 "))
            #expect(responses[2].body.isEmpty && responses[2].header("content-length") == "0")
            #expect(responses[4].text.hasPrefix("POST /repository/index 5 "))
            #expect(mesh.backend.requests == ["PUT /repository/snap-1", "GET /repository/snap-1?version=2", "HEAD /repository/",
                                              "POST /repository/index"])
            #expect(mesh.backend.connections == 1)
            let denied = try #require(Self.decisions(mesh, "deny").first)
            #expect(denied.method == "DELETE")
            #expect(denied.path == "/repository/snap-1")
            #expect(denied.reason?.contains("permission #1") == true)
            #expect(denied.source?.hasSuffix("/svc/backup-agent") == true)
            #expect(Self.decisions(mesh, "allow").count == 4)
            let metrics = mesh.storage.settings.metrics?.exposition() ?? ""
            #expect(metrics.contains(#"backup_sidecar_intention_decisions_total{layer="l7",result="deny"} 1"#), "\(metrics)")
            #expect(metrics.contains(#"backup_sidecar_intention_decisions_total{layer="l7",result="allow"} 4"#), "\(metrics)")
            Self.expectTransport(mesh, mux)
        }
    }

    @Test("curl: PUT and GET pass with their bodies, DELETE gets 403")
    func curlRequests() async throws {
        let mesh = try await Self.start()
        try await withTeardown({ await mesh.stop() }) {
            let put = try await Self.curl(mesh.upstreamPort, ["-X", "PUT", "--data-binary", "snapshot-1", "URL/repository/snap-1"])
            #expect(put.status == "200" && put.body.hasPrefix("PUT /repository/snap-1 10 "), "\(put)")
            let get = try await Self.curl(mesh.upstreamPort, ["URL/repository/snap-1"])
            #expect(get.status == "200" && get.body.hasPrefix("GET /repository/snap-1 0 "), "\(get)")
            let delete = try await Self.curl(mesh.upstreamPort, ["-X", "DELETE", "URL/repository/snap-1"])
            #expect(delete.status == "403" && delete.body.isEmpty, "\(delete)")
            #expect(mesh.backend.requests == ["PUT /repository/snap-1", "GET /repository/snap-1"])
        }
    }

    @Test("A 4 MiB upload (64 windows of the service's) streams through with the right digest")
    func largeUploads() async throws {
        let mesh = try await Self.start()
        try await withTeardown({ await mesh.stop() }) {
            let data = secureRandomBytes(4 << 20)
            let file = Self.temporaryFile("h2-upload", data)
            defer { try? FileManager.default.removeItem(atPath: file) }

            let allowed = try await Self.curl(mesh.upstreamPort, ["-T", file, "URL/repository/big.bin"])
            #expect(allowed.status == "200", "\(allowed)")
            #expect(allowed.body == "PUT /repository/big.bin \(4 << 20) \(Self.sha256(data))", "\(allowed)")
            #expect(mesh.backend.requests == ["PUT /repository/big.bin"])
        }
    }

    @Test("A denied upload is stopped with RST_STREAM(NO_ERROR) after its 403; the DATA already sent is dropped with its credit returned; the connection goes on")
    func deniedUploadCut() async throws {
        let mesh = try await Self.start()
        try await withTeardown({ await mesh.stop() }) {
            let (restore, _) = try await MeshFixture.startAgent(certificate: "restore-agent", storagePort: mesh.publicPort)
            try await withTeardown({ await restore.stop() }) {
                let connection = try TestH2Connection(port: restore.boundAddress(of: "upstream:storage")!.port!)
                let body = secureRandomBytes(1 << 20)
                let (denied, credit, resets, after) = try await onThread {
                    Result {
                        let denied = try connection.request("PUT", "/repository/snap-1", body: body)
                        // Until the reset and all the credit came (or 10 s of nothing): a quiet
                        // second is no sign the rest will not come on a loaded machine.
                        connection.drain { $0.resets[1] != nil && $0.connectionCredit >= body.count }
                        let credit = connection.connectionCredit, resets = connection.resets
                        return (denied, credit, resets, try connection.request("GET", "/repository/snap-1"))
                    }
                }.get()
                #expect(denied.status == "403")
                #expect(resets[1] == HTTP2ErrorCode.noError.rawValue, "\(resets)")
                #expect(credit == body.count)
                #expect(after.status == "200" && after.text.hasPrefix("GET /repository/snap-1 0 "))
                #expect(mesh.backend.requests == ["GET /repository/snap-1"])
                #expect(mesh.backend.bytesReceived == 0)
            }
        }
    }

    @Test("Many concurrent streams on few connections, half of them denied (h2load)", arguments: [MuxMode.prefer, .off])
    func concurrentStreams(_ mux: MuxMode) async throws {
        let mesh = try await Self.start(mux: mux)
        try await withTeardown({ await mesh.stop() }) {
            let base = "http://127.0.0.1:\(mesh.upstreamPort)"
            // URIs are used in turn: /repository/ is readable, /admin/ matches no permission.
            let run = try await ProcessRunner.run(["h2load", "-n", "400", "-c", "4", "-m", "25",
                                                   "\(base)/repository/a", "\(base)/admin/purge"], timeout: 60)
            #expect(run.status == 0, "\(run.output)")
            // h2load counts a 4xx as failed; errored would be a broken stream or connection.
            #expect(run.output.contains("requests: 400 total, 400 started, 400 done, 200 succeeded, 200 failed, 0 errored"), "\(run.output)")
            #expect(run.output.contains("status codes: 200 2xx, 0 3xx, 200 4xx, 0 5xx"), "\(run.output)")
            #expect(mesh.backend.requests.count == 200)
            #expect(mesh.backend.requests.allSatisfy { $0 == "GET /repository/a" })
            #expect(mesh.backend.connections == 4)
            #expect(Self.decisions(mesh, "allow").count == 200)
            #expect(Self.decisions(mesh, "deny").count == 200)
            #expect(Self.decisions(mesh, "deny").allSatisfy { $0.path == "/admin/purge" && $0.reason?.contains("permission #3") == true })
            Self.expectTransport(mesh, mux)
        }
    }

    @Test("Concurrent uploads, half of them denied mid-body, on shared connections (h2load)")
    func concurrentUploads() async throws {
        let mesh = try await Self.start()
        try await withTeardown({ await mesh.stop() }) {
            let data = secureRandomBytes(128 << 10)
            let file = Self.temporaryFile("h2-load", data)
            defer { try? FileManager.default.removeItem(atPath: file) }
            let base = "http://127.0.0.1:\(mesh.upstreamPort)"
            // -d makes every request a POST with the file as its body: allowed under /repository/.
            let run = try await ProcessRunner.run(["h2load", "-n", "60", "-c", "2", "-m", "10", "-d", file,
                                                   "\(base)/repository/u", "\(base)/admin/u"], timeout: 60)
            #expect(run.status == 0, "\(run.output)")
            #expect(run.output.contains("requests: 60 total, 60 started, 60 done, 30 succeeded, 30 failed, 0 errored"), "\(run.output)")
            #expect(run.output.contains("status codes: 30 2xx, 0 3xx, 30 4xx, 0 5xx"), "\(run.output)")
            #expect(mesh.backend.requests.count == 30)
            #expect(mesh.backend.requests.allSatisfy { $0 == "POST /repository/u" })
            #expect(mesh.backend.bytesReceived == 30 * data.count, "every allowed body arrived whole, nothing of the denied ones")
        }
    }

    static let grpcIntentions: [Intention] = {
        try! IntentionsFile.decode(Data("""
            [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
              {"Action": "allow", "HTTP": {"PathPrefix": "/backup.Repository/", "Methods": ["POST"]}}
            ]}]}]
            """.utf8), source: "grpc.json")
    }()

    @Test("gRPC: a denied call gets a trailers-only PERMISSION_DENIED (grpc-status 7)", arguments: ["grpc", "http2"])
    func grpcDenied(_ proto: String) async throws {
        let mesh = try await Self.start(protocol: proto, intentions: Self.grpcIntentions)
        try await withTeardown({ await mesh.stop() }) {
            let grpc = ["-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers", "-D", "-", "--data-binary", "x"]
            let denied = try await Self.curl(mesh.upstreamPort, grpc + ["URL/backup.Admin/Purge"])
            #expect(denied.status == "200", "\(denied)")
            #expect(denied.body.contains("grpc-status: 7"), "\(denied)")
            #expect(denied.body.contains("grpc-message: denied by intention: "), "\(denied)")
            let allowed = try await Self.curl(mesh.upstreamPort, grpc + ["URL/backup.Repository/Put"])
            #expect(allowed.status == "200" && !allowed.body.contains("grpc-status"), "\(allowed)")
            #expect(mesh.backend.requests == ["POST /backup.Repository/Put"])
        }
    }

    @Test("On a grpc service every denial is a gRPC status, content-type or not")
    func grpcServiceDenial() async throws {
        let mesh = try await Self.start(protocol: "grpc", intentions: Self.grpcIntentions)
        try await withTeardown({ await mesh.stop() }) {
            let denied = try await Self.curl(mesh.upstreamPort, ["-D", "-", "URL/backup.Repository/Put"])
            #expect(denied.status == "200" && denied.body.contains("grpc-status: 7"), "\(denied)")
            #expect(mesh.backend.requests.isEmpty)
        }
    }

    @Test("Header rules see HTTP/2 pseudo-headers such as :authority")
    func authorityRule() async throws {
        let intentions = try IntentionsFile.decode(Data("""
            [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
              {"Action": "allow", "HTTP": {"PathPrefix": "/", "Header": [{"Name": ":authority", "Exact": "storage.internal"}]}}
            ]}]}]
            """.utf8), source: "authority.json")
        let mesh = try await Self.start(intentions: intentions)
        try await withTeardown({ await mesh.stop() }) {
            let named = try await Self.curl(mesh.upstreamPort, ["-H", "Host: storage.internal", "URL/repository/a"])
            let byAddress = try await Self.curl(mesh.upstreamPort, ["URL/repository/a"])
            #expect([named.status, byAddress.status] == ["200", "403"], "\(named) \(byAddress)")
            #expect(mesh.backend.requests == ["GET /repository/a"])
        }
    }

    @Test("Malformed HTTP/2 is refused with GOAWAY before anything reaches the service", arguments: [
        "hpack", "idle-data", "http1",
    ])
    func malformed(_ variant: String) async throws {
        let mesh = try await Self.start()
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 10)
            let client = TestH2Client()
            let bytes: [UInt8]
            switch variant {
            case "hpack":
                bytes = TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: 5, streamID: 1,
                                                               payload: [0xff, 0xff, 0xff, 0xff])
            case "idle-data":
                bytes = TestH2Client.start + TestH2Client.data(3, Array("DELETE".utf8)) + client.request(5, "GET", "/repository/a")
            default:
                bytes = Array("DELETE /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n".utf8)
            }
            socket.send(bytes)
            let reply = await onThread { socket.receiveAll(keepingPrefix: 1 << 16) }
            if variant != "http1" {
                let goaway = TestFrame.split(reply.prefix, partial: true).first { $0.header.type == HTTP2FrameType.goaway }
                #expect(goaway.map { UInt32(bytes: $0.payload[4..<8]) } == (variant == "hpack" ? 0x9 : 0x1), "\(reply.prefix)")
            }
            #expect(await eventually {
                Self.decisions(mesh, "deny").contains { $0.reason?.hasPrefix("malformed HTTP/2") == true }
            }, "\(mesh.storageAudit.events.map(\.jsonLine))")
            #expect(mesh.backend.requests.isEmpty)
            #expect(Self.decisions(mesh, "allow").isEmpty)
        }
    }
}
