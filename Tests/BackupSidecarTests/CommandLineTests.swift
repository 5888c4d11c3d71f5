import Foundation
import Testing
import TestFixtures
import TestSupport
@testable import SidecarModel

/// The real `backup-sidecar` binary: bad input at startup is a non-zero exit with a message
/// naming the file and field, never a crash.
@Suite("Command line", .serialized)
struct CommandLineTests {
    static let goodService = SidecarBinary.write("storage.json", """
        {"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "port": 1, "address": "127.0.0.1",
          "proxy": {"destination_service_name": "storage", "local_service_port": 9}}}
        """)

    struct Case: CustomTestStringConvertible, Sendable {
        let name: String
        let arguments: @Sendable () -> [String]
        let status: Int32
        let messageContains: [String]
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "missing service file", arguments: { ["--service-file", "/nonexistent/storage.json"] + SidecarBinary.certs() },
             status: 2, messageContains: ["/nonexistent/storage.json", "cannot read"]),
        Case(name: "malformed JSON", arguments: { ["--service-file", SidecarBinary.write("broken.json", "{\"service\": {")] + SidecarBinary.certs() },
             status: 2, messageContains: ["broken.json", "not valid JSON"]),
        Case(name: "missing required field", arguments: {
            ["--service-file", SidecarBinary.write("nodest.json", #"{"service":{"kind":"connect-proxy","name":"x","proxy":{}}}"#)] + SidecarBinary.certs()
        }, status: 2, messageContains: ["nodest.json", "service.proxy.destination_service_name", "missing"]),
        Case(name: "wrong field type", arguments: {
            ["--service-file", SidecarBinary.write("badport.json", #"{"service":{"kind":"connect-proxy","name":"x","port":"high","proxy":{"destination_service_name":"s"}}}"#)] + SidecarBinary.certs()
        }, status: 2, messageContains: ["badport.json", "service.port"]),
        Case(name: "malformed intentions file", arguments: {
            ["--service-file", goodService, "--intentions-file",
             SidecarBinary.write("intentions.json", #"[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"a","Action":"permit"}]}]"#)] + SidecarBinary.certs()
        }, status: 2, messageContains: ["intentions.json", "[0].sources[0].action", "permit"]),
        Case(name: "key does not match certificate", arguments: { ["--service-file", goodService] + SidecarBinary.certs("storage", key: "backup-agent") },
             status: 2, messageContains: ["does not match"]),
        Case(name: "expired own leaf", arguments: { ["--service-file", goodService] + SidecarBinary.certs("expired") },
             status: 2, messageContains: ["expired"]),
        Case(name: "certificate file is not PEM", arguments: {
            ["--service-file", goodService, "--cert", SidecarBinary.write("junk.pem", "not a certificate"), "--key", TestCertificates.path("storage.key"),
             "--ca", TestCertificates.path("ca.pem")]
        }, status: 2, messageContains: ["junk.pem", "PEM"]),
        Case(name: "bad --upstream-endpoint", arguments: { ["--service-file", goodService, "--upstream-endpoint", "storage:8080"] + SidecarBinary.certs() },
             status: 2, messageContains: ["--upstream-endpoint", "NAME=HOST:PORT"]),
        Case(name: "upstream on a non-loopback address", arguments: {
            ["--service-file", SidecarBinary.write("remote-upstream.json", #"{"service":{"kind":"connect-proxy","name":"a","proxy":{"destination_service_name":"a","upstreams":[{"destination_name":"storage","local_bind_address":"0.0.0.0","local_bind_port":19100}]}}}"#)] + SidecarBinary.certs()
        }, status: 2, messageContains: ["storage", "0.0.0.0", "not loopback", "--allow-remote-upstreams"]),
        Case(name: "file mode: an upstream with no local bind", arguments: {
            ["--service-file", SidecarBinary.write("tproxy-upstream.json", #"{"service":{"kind":"connect-proxy","name":"a","proxy":{"destination_service_name":"a","upstreams":[{"destination_name":"storage"}]}}}"#)] + SidecarBinary.certs()
        }, status: 2, messageContains: ["tproxy-upstream.json", "upstream \"storage\" skipped", "local_bind_port"]),
        Case(name: "neither Consul mode nor file mode", arguments: { [] },
             status: 2, messageContains: ["-sidecar-for", "--service-file"]),
        Case(name: "Consul mode combined with file-mode certificates", arguments: { ["-sidecar-for", "storage"] + SidecarBinary.certs() },
             status: 2, messageContains: ["--cert", "cannot be combined with Consul mode"]),
        Case(name: "both -sidecar-for and -proxy-id", arguments: { ["-sidecar-for", "storage", "-proxy-id", "storage-sidecar-proxy"] },
             status: 2, messageContains: ["not both"]),
        Case(name: "unsupported agent address scheme", arguments: { ["-sidecar-for", "storage", "-http-addr", "ftp://agent:21"] },
             status: 2, messageContains: ["ftp://agent:21", "unsupported scheme"]),
        Case(name: "unreadable token file", arguments: { ["-sidecar-for", "storage", "-token-file", "/nonexistent/token"] },
             status: 2, messageContains: ["/nonexistent/token"]),
        Case(name: "agent unreachable past the startup timeout", arguments: {
            ["-sidecar-for", "storage", "-http-addr", "127.0.0.1:\(freeLocalPort())", "--startup-timeout", "1s"]
        }, status: 2, messageContains: ["could not find the proxy registration", "Consul agent"]),
        Case(name: "--login-method with -token", arguments: { ["-sidecar-for", "storage", "-token", "t", "--login-method", "azure-msi",
                                                               "--azure-managed-identity"] },
             status: 2, messageContains: ["--login-method cannot be combined with -token"]),
        Case(name: "--login-method without a bearer source", arguments: { ["-sidecar-for", "storage", "--login-method", "azure-msi"] },
             status: 2, messageContains: ["exactly one of --login-bearer-token-file and --azure-managed-identity"]),
        Case(name: "bad --login-meta", arguments: { ["-sidecar-for", "storage", "--login-method", "m", "--login-bearer-token-file", "/x",
                                                     "--login-meta", "novalue"] },
             status: 2, messageContains: ["--login-meta must be KEY=VALUE"]),
        Case(name: "bad --default-intention", arguments: { ["--service-file", goodService, "--default-intention", "maybe"] + SidecarBinary.certs() },
             status: 2, messageContains: ["--default-intention"]),
    ]

    @Test("Bad startup input exits non-zero with a message naming the problem", arguments: cases)
    func startupError(_ testCase: Case) async throws {
        #expect(FileManager.default.isExecutableFile(atPath: SidecarBinary.path), "build the binary first: swift build --build-tests")
        let result = try await ProcessRunner.run([SidecarBinary.path, "run"] + testCase.arguments(), timeout: 20)
        #expect(result.status == testCase.status, "output: \(result.output)")
        #expect(result.output.contains("backup-sidecar: error:"), "output: \(result.output)")
        for fragment in testCase.messageContains {
            #expect(result.output.contains(fragment), "\"\(fragment)\" missing from: \(result.output)")
        }
        #expect(!result.output.contains("Fatal error"), "crashed: \(result.output)")
    }

    @Test("CONNECT_PROXY_ID / CONNECT_SIDECAR_FOR choose Consul mode like the flags (the proxy ID first); a flag or file mode wins")
    func connectEnvironment() async throws {
        let port = freeLocalPort()
        func run(_ environment: [String], _ arguments: [String] = []) async throws -> ProcessRunner.Result {
            try await ProcessRunner.run(["env"] + environment + ["CONSUL_HTTP_ADDR=127.0.0.1:\(port)", SidecarBinary.path, "run",
                                                                  "--startup-timeout", "1s"] + arguments, timeout: 20)
        }
        let sidecarFor = try await run(["CONNECT_SIDECAR_FOR=storage"])
        #expect(sidecarFor.status == 2 && sidecarFor.output.contains("could not find the proxy registration"), "\(sidecarFor.output)")
        #expect(sidecarFor.output.contains("127.0.0.1:\(port)"), "\(sidecarFor.output)")
        let proxyID = try await run(["CONNECT_SIDECAR_FOR=storage", "CONNECT_PROXY_ID=storage-sidecar-proxy"])
        #expect(proxyID.status == 2 && proxyID.output.contains("could not read the proxy registration"), "\(proxyID.output)")
        let flagWins = try await run(["CONNECT_PROXY_ID=storage-sidecar-proxy"], ["-sidecar-for", "storage"])
        #expect(flagWins.output.contains("could not find the proxy registration"), "\(flagWins.output)")
        let fileMode = try await run(["CONNECT_SIDECAR_FOR=storage"], ["--service-file", "/nonexistent/storage.json"] + SidecarBinary.certs())
        #expect(fileMode.output.contains("/nonexistent/storage.json"), "file mode is not switched to Consul mode: \(fileMode.output)")
    }

    @Test("A listener address already in use is a clear startup error (exit 3)")
    func portInUse() async throws {
        let holder = try await TestBackend(.echo, group: testGroup)
        try await withTeardown({ await holder.stop() }) {
            let service = SidecarBinary.write("busy.json", """
                {"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "port": \(holder.port), "address": "127.0.0.1",
                  "proxy": {"destination_service_name": "storage", "local_service_port": 9}}}
                """)
            let result = try await ProcessRunner.run([SidecarBinary.path, "run", "--service-file", service] + SidecarBinary.certs(), timeout: 20)
            #expect(result.status == 3, "output: \(result.output)")
            #expect(result.output.contains("cannot bind public listener on 127.0.0.1:\(holder.port)"), "output: \(result.output)")
        }
    }
}
