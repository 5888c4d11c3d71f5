import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TestFixtures
@testable import ConsulAgent
import TestSupport

/// The agent reached the ways CONSUL_HTTP_ADDR allows: a unix socket, and HTTPS with
/// CONSUL_CACERT / CONSUL_CLIENT_CERT / CONSUL_TLS_SERVER_NAME against a real `openssl s_server`.
@Suite("Consul client transports", .serialized)
struct ConsulClientTransportTests {
    static func scratchDirectory() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("consul-transport-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test("unix:///path: requests (with the token) go over the agent's unix socket")
    func unixSocket() async throws {
        let directory = try Self.scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/consul.sock"
        let server = try await ScriptedHTTPServer(group: testGroup, unixSocketPath: path) { _, _ in
            .init(body: #"{"Config": {"Datacenter": "dc-unix"}}"#)
        }
        try await withTeardown({ await server.stop() }) {
            let settings = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil,
                                                                environment: ["CONSUL_HTTP_ADDR": "unix://\(path)", "CONSUL_HTTP_TOKEN": "unix-token"])
            let client = try ConsulClient(settings: settings, eventLoopGroup: testGroup)
            let response = try await client.get("/v1/agent/self")
            await client.shutdown()
            #expect(String(decoding: response.body, as: UTF8.self).contains("dc-unix"))
            #expect(server.requests == ["GET /v1/agent/self token=unix-token"])
        }
    }

    @Test("CONSUL_HTTP_AUTH sends HTTP basic auth on every call, next to the token")
    func basicAuth() async throws {
        let directory = try Self.scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/consul.sock"
        let server = try await ScriptedHTTPServer(group: testGroup, unixSocketPath: path) { _, _ in .init(body: "{}") }
        try await withTeardown({ await server.stop() }) {
            for (auth, expected) in [("backup:s3cret", "YmFja3VwOnMzY3JldA=="), ("backup", "YmFja3VwOg==")] {
                let settings = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: [
                    "CONSUL_HTTP_ADDR": "unix://\(path)", "CONSUL_HTTP_TOKEN": "t", "CONSUL_HTTP_AUTH": auth,
                ])
                let client = try ConsulClient(settings: settings, eventLoopGroup: testGroup)
                _ = try await client.get("/v1/agent/self")
                await client.shutdown()
                #expect(server.requests.last == "GET /v1/agent/self token=t authorization=Basic \(expected)")
                #expect(!settings.summary.contains("s3cret"))
            }
        }
    }

    @Test("Cancelling a caller mid blocking query closes its connection at once (a stopping watch does not wait out the query)",
          .timeLimit(.minutes(1)))
    func cancelledRequestCloses() async throws {
        let accepted = NIOLockedValueBox(0), closed = NIOLockedValueBox(0)
        // An agent that takes the request and never answers, as in a blocking query's wait.
        let listener = try await ServerBootstrap(group: testGroup)
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0 += 1 }
                channel.closeFuture.whenComplete { _ in closed.withLockedValue { $0 += 1 } }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { listener.close(promise: nil) }
        let port = listener.localAddress!.port!
        let settings = try ConsulConnectionSettings.resolve(httpAddr: "127.0.0.1:\(port)", token: nil, tokenFile: nil, environment: [:])
        let client = try ConsulClient(settings: settings, eventLoopGroup: testGroup)
        let call = Task { try await client.get("/v1/health/service/storage", query: [("index", "7"), ("wait", "5m")], timeout: .minutes(6)) }
        #expect(await eventually(timeout: 20) { accepted.withLockedValue { $0 } == 1 })
        call.cancel()
        await #expect(throws: (any Error).self) { _ = try await call.value }
        #expect(await eventually(timeout: 20) { closed.withLockedValue { $0 } == 1 }, "the agent sees the connection end")
        await client.shutdown()
    }

    /// `openssl s_server -WWW` serving `v1/agent/self` from a directory, over TLS with a server
    /// certificate for consul.test; with `requireClientCert` it demands one signed by the test CA.
    static func startTLSAgent(in directory: String, requireClientCert: Bool,
                              subjectAltName: String = "DNS:consul.test") async throws -> (Process, Int) {
        let make = try await ProcessRunner.run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "\(directory)/server.key", "-out", "\(directory)/server.pem", "-days", "1",
            "-subj", "/CN=consul.test", "-addext", "subjectAltName=\(subjectAltName)",
        ])
        #expect(make.status == 0, "\(make.output)")
        try FileManager.default.createDirectory(atPath: "\(directory)/v1/agent", withIntermediateDirectories: true)
        try #"{"Config": {"Datacenter": "dc-tls"}}"#.write(toFile: "\(directory)/v1/agent/self", atomically: true, encoding: .utf8)
        let port = freeLocalPort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", "server.pem", "-key", "server.key", "-WWW", "-quiet"]
            + (requireClientCert ? ["-Verify", "2", "-CAfile", TestCertificates.path("ca.pem")] : [])
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        #expect(await eventually { (try? BlockingSocket(port: port)) != nil })
        return (process, port)
    }

    /// `timeout` bounds the request. A refused handshake fails at once (nothing retries it), so
    /// refusals take the same long bound as answers: a handshake slowed by a loaded machine must
    /// still end in the refusal's own reason, not in the deadline.
    static func fetch(_ environment: [String: String], timeout: TimeAmount = .seconds(30)) async -> Result<String, any Error> {
        do {
            let settings = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: environment)
            let client = try ConsulClient(settings: settings, eventLoopGroup: testGroup)
            return try await withTeardown({ await client.shutdown() }) {
                let response = try await client.get("/v1/agent/self", timeout: timeout)
                return .success(String(decoding: response.body, as: UTF8.self))
            }
        } catch {
            return .failure(error)
        }
    }

    @Test("HTTPS: CONSUL_CACERT + CONSUL_TLS_SERVER_NAME verify the agent; a wrong name or CA is refused")
    func httpsServerVerification() async throws {
        let directory = try Self.scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (server, port) = try await Self.startTLSAgent(in: directory, requireClientCert: false)
        defer { server.forceStop() }
        let base = ["CONSUL_HTTP_ADDR": "https://127.0.0.1:\(port)", "CONSUL_CACERT": "\(directory)/server.pem"]

        var good = base
        good["CONSUL_TLS_SERVER_NAME"] = "consul.test"
        let answer = await Self.fetch(good)
        #expect((try? answer.get())?.contains("dc-tls") == true, "\(answer)")

        // Refusals name OpenSSL's reason (the client is our OpenSSL layer, like the mesh).
        let noName = await Self.fetch(base)
        #expect((try? noName.get()) == nil, "the certificate is for consul.test, not 127.0.0.1")
        #expect("\(noName)".lowercased().contains("ip address mismatch"), "\(noName)")
        var otherName = good
        otherName["CONSUL_TLS_SERVER_NAME"] = "consul.test.evil"
        let wrongName = await Self.fetch(otherName)
        #expect("\(wrongName)".lowercased().contains("hostname mismatch"), "\(wrongName)")

        var wrongCA = good
        wrongCA["CONSUL_CACERT"] = TestCertificates.path("ca.pem")
        let otherCA = await Self.fetch(wrongCA)
        #expect((try? otherCA.get()) == nil, "an agent certificate from another CA is refused")
        #expect("\(otherCA)".contains("certificate chain rejected"), "\(otherCA)")

        var ssl = good
        ssl["CONSUL_HTTP_ADDR"] = "127.0.0.1:\(port)"
        ssl["CONSUL_HTTP_SSL"] = "true"
        #expect((try? await Self.fetch(ssl).get())?.contains("dc-tls") == true, "CONSUL_HTTP_SSL=true with a bare address")
        ssl["CONSUL_HTTP_ADDR"] = "http://127.0.0.1:\(port)"
        #expect((try? await Self.fetch(ssl).get())?.contains("dc-tls") == true, "CONSUL_HTTP_SSL=true: even http:// stays HTTPS")

        // CONSUL_CAPATH: a directory of PEM files instead of one file.
        let caDirectory = "\(directory)/ca.d"
        try FileManager.default.createDirectory(atPath: caDirectory, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: TestCertificates.path("ca.pem"), toPath: "\(caDirectory)/other.pem")
        try FileManager.default.copyItem(atPath: "\(directory)/server.pem", toPath: "\(caDirectory)/agent.pem")
        var capath = good
        capath["CONSUL_CACERT"] = nil
        capath["CONSUL_CAPATH"] = caDirectory
        let viaPath = await Self.fetch(capath)
        #expect((try? viaPath.get())?.contains("dc-tls") == true, "\(viaPath)")
        try "not a certificate".write(toFile: "\(caDirectory)/README", atomically: true, encoding: .utf8)
        let unreadable = await Self.fetch(capath)
        #expect("\(unreadable)".contains("no PEM certificate in \(caDirectory)/README"), "\(unreadable)")

        // CONSUL_HTTP_SSL_VERIFY=false: name and CA go unchecked (and the summary says so).
        var unverified = wrongCA
        unverified["CONSUL_TLS_SERVER_NAME"] = nil
        unverified["CONSUL_HTTP_SSL_VERIFY"] = "false"
        #expect((try? await Self.fetch(unverified).get())?.contains("dc-tls") == true)
        let summary = try ConsulConnectionSettings.resolve(httpAddr: nil, token: nil, tokenFile: nil, environment: unverified).summary
        #expect(summary.contains("TLS NOT VERIFIED"), "\(summary)")
    }

    @Test("HTTPS with a client certificate: CONSUL_CLIENT_CERT/KEY are presented; without them the agent refuses")
    func httpsClientCertificate() async throws {
        let directory = try Self.scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (server, port) = try await Self.startTLSAgent(in: directory, requireClientCert: true)
        defer { server.forceStop() }
        let base = ["CONSUL_HTTP_ADDR": "https://127.0.0.1:\(port)", "CONSUL_CACERT": "\(directory)/server.pem",
                    "CONSUL_TLS_SERVER_NAME": "consul.test"]
        var withCert = base
        withCert["CONSUL_CLIENT_CERT"] = TestCertificates.path("backup-agent.pem")
        withCert["CONSUL_CLIENT_KEY"] = TestCertificates.path("backup-agent.key")
        let answer = await Self.fetch(withCert)
        #expect((try? answer.get())?.contains("dc-tls") == true, "\(answer)")
        #expect((try? await Self.fetch(base).get()) == nil, "no client certificate, no answer")
    }

    @Test("HTTPS to an IP address: the agent certificate's IP SAN is checked, with no CONSUL_TLS_SERVER_NAME")
    func httpsIPAddressSAN() async throws {
        let directory = try Self.scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (server, port) = try await Self.startTLSAgent(in: directory, requireClientCert: false,
                                                          subjectAltName: "IP:127.0.0.1")
        defer { server.forceStop() }
        let environment = ["CONSUL_HTTP_ADDR": "https://127.0.0.1:\(port)", "CONSUL_CACERT": "\(directory)/server.pem"]
        let answer = await Self.fetch(environment)
        #expect((try? answer.get())?.contains("dc-tls") == true, "\(answer)")
        var byName = environment
        byName["CONSUL_TLS_SERVER_NAME"] = "consul.test"
        let refused = await Self.fetch(byName)
        #expect("\(refused)".lowercased().contains("hostname mismatch"), "neither an IP SAN nor the CN stands for a DNS name: \(refused)")
    }
}
