import Foundation
import Glibc
import NIOCore
@testable import SidecarHTTP
import NIOConcurrencyHelpers
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// The admin listener, scraped with curl.
@Suite("Admin API and metrics", .serialized)
struct AdminTests {
    /// One line of the Prometheus text exposition format (comment or sample).
    static let sampleLine = try! NSRegularExpression(pattern:
        #"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?([0-9.e+-]+|NaN|\+Inf|-Inf)$"#)
    static let commentLine = try! NSRegularExpression(pattern: #"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]*( .*)?$"#)

    static func matches(_ regex: NSRegularExpression, _ line: String) -> Bool {
        regex.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) != nil
    }

    static func value(_ metrics: String, _ prefix: String) -> Double? {
        metrics.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }.flatMap { Double($0.split(separator: " ").last!) }
    }

    @Test("/metrics during traffic: counters move and every line is valid exposition format")
    func metrics() async throws {
        // Raw mode: the gauge counts TLS connections, and a pooled mux connection outlives its tunnels.
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        try await withTeardown({ await mesh.stop() }) {
            let metrics = try #require(mesh.storage.settings.metrics)
            let admin = try await AdminServer.start(host: "127.0.0.1", port: 0, sidecar: mesh.storage, metrics: metrics, group: testGroup)
            try await withTeardown({ await admin.stop() }) {
                let port = admin.port

                let open = try BlockingSocket(port: mesh.upstreamPort)
                open.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(open, "measured\n") })
                let during = try await AdminHTTP.get(port, "/metrics")
                #expect(during.status == "200")
                #expect(Self.value(during.body, #"backup_sidecar_connections_active{listener="public"}"#) == 1)
                #expect(Self.value(during.body, #"backup_sidecar_connections_total{listener="public",outcome="allowed"}"#) == 1)
                #expect(Self.value(during.body, #"backup_sidecar_intention_decisions_total{layer="l4",result="allow"}"#) == 1)
                #expect(during.body.contains("backup_sidecar_handshake_duration_seconds_bucket"))
                #expect((Self.value(during.body, "backup_sidecar_leaf_expiry_seconds") ?? 0) > 86_400)
                // Bytes count as they flow: a connection still open shows its bytes, and more after more.
                let fromMesh = #"backup_sidecar_bytes_total{listener="public",direction="from_mesh"}"#
                let toMesh = #"backup_sidecar_bytes_total{listener="public",direction="to_mesh"}"#
                #expect(Self.value(during.body, fromMesh) == 9 && Self.value(during.body, toMesh) == 9, "\(during.body)")
                #expect(await onThread { echoPing(open, "and more\n") })
                let later = try await AdminHTTP.get(port, "/metrics")
                #expect(Self.value(later.body, fromMesh) == 18 && Self.value(later.body, toMesh) == 18, "\(later.body)")

                // A refused peer and a finished connection move their counters too.
                _ = try await ProcessRunner.run(["openssl", "s_client", "-connect", "127.0.0.1:\(mesh.publicPort)", "-quiet",
                                                 "-cert", TestCertificates.path("other-backup-agent.pem"),
                                                 "-key", TestCertificates.path("other-backup-agent.key")], input: Data(), timeout: 10)
                open.shutdownWrite()
                _ = await onThread { open.receiveAll() }
                #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .connectionClosed } })
                let after = try await AdminHTTP.get(port, "/metrics")
                #expect(Self.value(after.body, #"backup_sidecar_connections_total{listener="public",outcome="rejected"}"#) == 1)
                #expect(Self.value(after.body, #"backup_sidecar_handshake_failures_total{listener="public",reason="untrusted_certificate"}"#) == 1)
                #expect(Self.value(after.body, fromMesh) == 18, "closing adds nothing twice: \(after.body)")
                #expect(Self.value(after.body, #"backup_sidecar_connections_active{listener="public"}"#) == 0)

                let lines = after.body.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
                #expect(lines.count > 10)
                for line in lines {
                    #expect(Self.matches(Self.commentLine, line) || Self.matches(Self.sampleLine, line), "not exposition format: \(line)")
                }
                // Every family has HELP and TYPE, and Prometheus' own linter agrees.
                let typed = Set(lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] })
                let helped = Set(lines.filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
                #expect(typed == helped && typed.count > 15, "\(typed.symmetricDifference(helped))")
                let lint = try await ProcessRunner.run(["promtool", "check", "metrics"], input: Data((after.body + "\n").utf8), timeout: 30) // get() trimmed the final newline
                #expect(lint.status == 0, "promtool: \(lint.output)")

                // The standard process families, with values that can only be this process's.
                let start = try #require(Self.value(after.body, "process_start_time_seconds"))
                #expect(start <= Date().timeIntervalSince1970 && start > Date().timeIntervalSince1970 - 6 * 3600)
                #expect((Self.value(after.body, "process_resident_memory_bytes") ?? 0) > 1_000_000)
                let openFDs = try #require(Self.value(after.body, "process_open_fds"))
                #expect(openFDs > 3 && openFDs <= (Self.value(after.body, "process_max_fds") ?? 0))
                #expect((Self.value(after.body, "process_cpu_seconds_total") ?? 0) > 0)
                #expect((Self.value(after.body, "process_threads") ?? 0) >= 2)
            }
        }
    }

    @Test("/metrics with the mux: pooled connections and streams on each side, and the allocator's heap gauges")
    func muxAndHeapGauges() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        let servers = NIOLockedValueBox<[HTTPServer]>([])
        try await withTeardown({
            for server in servers.withLockedValue({ $0 }) { await server.stop() }
            await mesh.stop()
        }) {
            var admins: [HTTPServer] = []
            for sidecar in [mesh.storage, mesh.agent] {
                admins.append(try await AdminServer.start(host: "127.0.0.1", port: 0, sidecar: sidecar,
                                                          metrics: try #require(sidecar.settings.metrics), group: testGroup))
                servers.withLockedValue { $0.append(admins[admins.count - 1]) }
            }
            let tunnels = try (0..<3).map { _ in try BlockingSocket(port: mesh.upstreamPort) }
            for tunnel in tunnels {
                // Only a failure waits this long; the first ping also opens the pooled mux
                // connection, which under a busy suite has taken more than 5 s.
                tunnel.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(tunnel, "gauged\n") })
            }
            let storage = try await AdminHTTP.get(admins[0].port, "/metrics").body
            let agent = try await AdminHTTP.get(admins[1].port, "/metrics").body
            #expect(Self.value(storage, #"backup_sidecar_mux_streams_active{side="inbound"}"#) == 3)
            #expect(Self.value(agent, #"backup_sidecar_mux_streams_active{side="upstream"}"#) == 3)
            let pooled = try #require(Self.value(agent, #"backup_sidecar_mux_connections_active{side="upstream"}"#))
            #expect(pooled >= 1 && pooled <= 3)
            #expect(Self.value(storage, #"backup_sidecar_mux_streams_active{side="upstream"}"#) == 0)
            // Live objects: at least the 3 tunnels' TLS state and buffers, and less than RSS could hold.
            // (Under ASan/TSan malloc is the sanitizer's, and glibc's own counters stay near zero.)
            let heap = try #require(Self.value(storage, "backup_sidecar_heap_in_use_bytes"))
            let sanitizerMalloc = dlsym(nil, "__tsan_init") != nil || dlsym(nil, "__asan_init") != nil
            #expect((heap > 1_000_000 || sanitizerMalloc) && heap < 4_000_000_000)
            #expect((Self.value(storage, "backup_sidecar_heap_free_retained_bytes") ?? -1) >= 0)

            // Pipelined requests are answered in order (/metrics waits for the pools' counts).
            let pipelined = try BlockingSocket(port: admins[1].port)
            pipelined.setReceiveTimeout(seconds: 30)
            _ = pipelined.send(Array("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8))
            let answer = String(decoding: await onThread { pipelined.receiveAll(keepingPrefix: 1 << 20).prefix }, as: UTF8.self)
            let metricsAt = try #require(answer.range(of: "backup_sidecar_ready"))
            let liveAt = try #require(answer.range(of: "live\n"))
            #expect(metricsAt.lowerBound < liveAt.lowerBound)
            withExtendedLifetime(tunnels) {}
        }
    }

    @Test("/ready, /live, /certs and /config")
    func endpoints() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let admin = try await AdminServer.start(host: "127.0.0.1", port: 0, sidecar: mesh.storage,
                                                    metrics: mesh.storage.settings.metrics!, group: testGroup)
            try await withTeardown({ await admin.stop() }) {
                let port = admin.port

                #expect(try await AdminHTTP.get(port, "/live").status == "200")
                #expect(try await AdminHTTP.get(port, "/ready") == ("200", "ready"))

                let certs = try await AdminHTTP.get(port, "/certs")
                let report = try #require(try JSONSerialization.jsonObject(with: Data(certs.body.utf8)) as? [String: Any])
                let leaf = try #require(report["leaf"] as? [String: Any])
                #expect(leaf["serial"] as? String == mesh.storage.currentCredentials.leaf.serialNumber)
                #expect((leaf["spiffe_id"] as? String)?.hasSuffix("/svc/storage") == true)
                #expect((report["roots"] as? [Any])?.count == 1)
                #expect(!certs.body.contains("PRIVATE"))
                #expect(certs.body.contains("\"spiffe://") && !certs.body.contains("\\/"), "JSON does not escape /: \(certs.body)")

                let config = try await AdminHTTP.get(port, "/config")
                let effective = try #require(try JSONSerialization.jsonObject(with: Data(config.body.utf8)) as? [String: Any])
                #expect((effective["proxy"] as? [String: Any])?["destination_service"] as? String == "storage")
                #expect((effective["intentions"] as? [String: Any])?["count"] as? Int == 1)
                #expect(!config.body.contains("PRIVATE") && !config.body.contains("BEGIN"))

                _ = await mesh.storage.drain(timeout: .milliseconds(100))
                #expect(try await AdminHTTP.get(port, "/ready") == ("503", "draining"))
                #expect(try await AdminHTTP.get(port, "/nope").status == "404")

                // Read-only: other methods are refused, and a body is never read into memory.
                for method in ["POST", "PUT", "DELETE"] {
                    let run = try await ProcessRunner.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
                                                           "http://127.0.0.1:\(port)/ready"], timeout: 10)
                    #expect(run.output == "405", "\(method): \(run.output)")
                }
                let upload = try BlockingSocket(port: port)
                upload.setReceiveTimeout(seconds: 30)
                _ = upload.send(Array("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n".utf8) + [UInt8](repeating: 0x41, count: 4096))
                let refusal = String(decoding: await onThread { upload.receiveAll(keepingPrefix: 4096).prefix }, as: UTF8.self)
                #expect(refusal.hasPrefix("HTTP/1.1 413"), "\(refusal)")
                #expect(try await AdminHTTP.get(port, "/live").status == "200", "still serving")
            }
        }
    }

    @Test("--version names the version, the commit and the loaded OpenSSL and nghttp2; /metrics carries the same as backup_sidecar_build_info")
    func versionAndBuildInfo() async throws {
        let version = try await ProcessRunner.run([SidecarBinary.path, "--version"], timeout: 30)
        #expect(version.status == 0)
        let lines = version.output.split(separator: "\n").map(String.init)
        let first = try #require(lines.first)
        let match = try #require(first.wholeMatch(of: #/backup-sidecar (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}(-dirty)?|unknown)\)/#))
        let changelog = try String(contentsOf: TestCertificates.repositoryRoot.appendingPathComponent("CHANGELOG.md"), encoding: .utf8)
        #expect(changelog.contains("## [\(match.1)]"), "CHANGELOG.md has a section for the version the binary reports")
        let openssl = try await ProcessRunner.run(["openssl", "version"], timeout: 30).output
        #expect(lines.count == 3 && lines[1].hasPrefix("OpenSSL 3.") && openssl.hasPrefix(lines[1]), "\(lines) vs \(openssl)")
        #expect(lines[2].wholeMatch(of: #/nghttp2 1\.\d+\.\d+/#) != nil, "\(lines)")

        let (port, service) = SidecarBinary.publicListenerOnly("buildinfo.json")
        let adminPort = freeLocalPort()
        let sidecar = try SidecarProcess(["run", "--admin-bind", "127.0.0.1:\(adminPort)", "--service-file", service]
                                         + SidecarBinary.certs(), logName: "buildinfo.log")
        // The admin listener is bound after the public one: wait for it too.
        #expect(await eventually(timeout: 20) { (try? BlockingSocket(port: port)) != nil && (try? BlockingSocket(port: adminPort)) != nil })
        let metrics = try await AdminHTTP.get(adminPort, "/metrics").body
        let commit = String(match.2)
        #expect(Self.value(metrics, #"backup_sidecar_build_info{version="\#(match.1)",commit="\#(commit)",openssl="\#(lines[1])",nghttp2="\#(lines[2].dropFirst(8))"}"#) == 1,
                "\(metrics)")
        #expect(await sidecar.terminate().status == 0)
    }

    @Test("--log-format json: every log line is a JSON object")
    func jsonLogs() async throws {
        let (port, service) = SidecarBinary.publicListenerOnly("jsonlog.json")
        let sidecar = try SidecarProcess(["run", "--admin-bind", "off", "--log-format", "json", "--service-file", service]
                                         + SidecarBinary.certs(), logName: "jsonlog.log")
        #expect(await eventually { (try? BlockingSocket(port: port)) != nil })
        let output = await sidecar.terminate().log
        let lines = output.split(separator: "\n")
        #expect(lines.count >= 3, "\(output)")
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["message"] != nil && object?["level"] != nil && object?["ts"] != nil, "not a JSON log line: \(line)")
        }
        #expect(output.contains("\"message\":\"sidecar running\""))
        #expect(output.contains("spiffe://") && !output.contains("\\/"), "JSON does not escape /")
    }

    @Test("Stdout and stderr whose reader went away (a log shipper that died): the sidecar keeps running and serving")
    func brokenOutputPipes() async throws {
        let (port, service) = SidecarBinary.publicListenerOnly("brokenpipe.json")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SidecarBinary.path)
        process.arguments = ["run", "--admin-bind", "off", "--log-format", "json", "--audit-log", "-", "--service-file", service]
            + SidecarBinary.certs()
        let stdout = Pipe(), stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        defer { process.forceStop() }
        // The reader goes away at once: every write after this gets EPIPE.
        try stdout.fileHandleForReading.close()
        try stderr.fileHandleForReading.close()
        try stdout.fileHandleForWriting.close()
        try stderr.fileHandleForWriting.close()
        #expect(await eventually { (try? BlockingSocket(port: port)) != nil })
        // Each refused handshake writes an audit line (stdout) and a log line (stderr); SIGHUP one more.
        for _ in 0..<3 {
            _ = try await ProcessRunner.run(["openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-quiet",
                                             "-cert", TestCertificates.path("other-backup-agent.pem"),
                                             "-key", TestCertificates.path("other-backup-agent.key")], input: Data(), timeout: 10)
        }
        kill(process.processIdentifier, SIGHUP)
        try await Task.sleep(for: .milliseconds(500))
        #expect(process.isRunning, "the sidecar died writing to a closed pipe")
        #expect((try? BlockingSocket(port: port)) != nil)
    }
}
