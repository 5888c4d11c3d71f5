import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarModel

/// `intention check` and `validate`: the pure cores with many cases, then the real binary's
/// output and exit status.
@Suite("Offline tools: intention check and validate")
struct OfflineToolsTests {
    static let deploy = TestCertificates.repositoryRoot.appendingPathComponent("deploy").path
    static func set(_ file: String, default action: IntentionAction = .deny) throws -> IntentionSet {
        IntentionSet(try IntentionsFile.load(path: "\(deploy)/\(file)"), defaultAction: action)
    }

    struct Case: CustomStringConvertible, Sendable {
        var source: String, destination: String, method: String?, path: String?, allowed: Bool, explains: String
        var description: String { "\(source) → \(destination) \(method ?? "") \(path ?? "")" }
    }

    static let l7Cases: [Case] = [
        Case(source: "backup-agent", destination: "storage", method: "PUT", path: "/repository/snap-1", allowed: true, explains: "permission #2"),
        Case(source: "backup-agent", destination: "storage", method: "GET", path: "/repository/", allowed: true, explains: "permission #2"),
        Case(source: "backup-agent", destination: "storage", method: "DELETE", path: "/repository/snap-1", allowed: false, explains: "permission #1"),
        Case(source: "backup-agent", destination: "storage", method: "DELETE", path: "/", allowed: false, explains: "permission #1"),
        Case(source: "backup-agent", destination: "storage", method: "PATCH", path: "/repository/x", allowed: false, explains: "permission #3"),
        Case(source: "backup-agent", destination: "storage", method: "GET", path: "/etc/passwd", allowed: false, explains: "permission #3"),
        // Normalised as the L7 filter does: dot segments and encoded unreserved characters.
        Case(source: "backup-agent", destination: "storage", method: "PUT", path: "/repository/../repository/x", allowed: true,
             explains: "normalised to /repository/x"),
        Case(source: "backup-agent", destination: "storage", method: "PUT", path: "/repository/../secret", allowed: false,
             explains: "normalised to /secret"),
        Case(source: "backup-agent", destination: "storage", method: "PUT", path: "/%72epository/x", allowed: true,
             explains: "normalised to /repository/x"),
        // Refused before any intention, as the filter refuses them with 400.
        Case(source: "backup-agent", destination: "storage", method: "GET", path: "/repository/a%2F..%2F..%2Fsecret", allowed: false,
             explains: "refused before intentions (400)"),
        Case(source: "backup-agent", destination: "storage", method: "GET", path: "repository/x", allowed: false, explains: "does not begin with /"),
        Case(source: "backup-agent", destination: "storage", method: "GET", path: "/repository/x#frag", allowed: false, explains: "fragment"),
        Case(source: "restore-agent", destination: "storage", method: "GET", path: "/repository/snap-1", allowed: true, explains: "permission #1"),
        Case(source: "restore-agent", destination: "storage", method: "PUT", path: "/repository/snap-1", allowed: false, explains: "permission #2"),
        Case(source: "web", destination: "storage", method: "GET", path: "/repository/snap-1", allowed: false, explains: "*"),
        Case(source: "backup-agent", destination: "other", method: "GET", path: "/", allowed: false, explains: "default policy"),
        // Without a request: an intention with permissions denies a plain TCP connection and says why.
        Case(source: "backup-agent", destination: "storage", method: nil, path: nil, allowed: false, explains: "give METHOD PATH"),
        Case(source: "web", destination: "storage", method: nil, path: nil, allowed: false, explains: "default/default/* -> default/storage"),
        Case(source: "other-ns/backup-agent", destination: "storage", method: "GET", path: "/repository/x", allowed: false,
             explains: "default policy"),
    ]

    @Test("L7 intentions (deploy/intentions-l7.json): the decision and what decided it", arguments: l7Cases)
    func l7(check: Case) throws {
        let outcome = try IntentionCheck.check(try Self.set("intentions-l7.json"), source: check.source, destination: check.destination,
                                               method: check.method, path: check.path)
        #expect(outcome.allowed == check.allowed, "\(outcome.explanation)")
        #expect(outcome.explanation.contains(check.explains), "\(outcome.explanation)")
    }

    @Test("L4 intentions and the default policy")
    func l4() throws {
        let set = try Self.set("intentions.json")
        #expect(try IntentionCheck.check(set, source: "backup-agent", destination: "storage").allowed)
        #expect(try IntentionCheck.check(set, source: "restore-agent", destination: "storage").allowed)
        #expect(try !IntentionCheck.check(set, source: "web", destination: "storage").allowed)
        #expect(try !IntentionCheck.check(set, source: "backup-agent", destination: "backup-agent").allowed)
        let open = try Self.set("intentions.json", default: .allow)
        let other = try IntentionCheck.check(open, source: "backup-agent", destination: "backup-agent")
        #expect(other.allowed && other.explanation == "default policy")
        // An L4 allow intention also allows each request.
        #expect(try IntentionCheck.check(set, source: "backup-agent", destination: "storage", method: "DELETE", path: "/x").allowed)
    }

    @Test("Names that are not NAME or NAMESPACE/NAME are refused", arguments: ["", "/", "a/", "/b", "a/b/c"])
    func badNames(name: String) throws {
        #expect(throws: IntentionCheck.InvalidName.self) { _ = try IntentionCheck.check(try Self.set("intentions.json"), source: name, destination: "storage") }
    }

    static func write(_ name: String, _ text: String) -> String { SidecarBinary.write(name, text) }

    @Test("validate: the deploy/ files and the dev certificates are fine")
    func validFiles() {
        let findings = ConfigValidation.run(serviceFile: "\(Self.deploy)/consul/storage.json", intentionsFile: "\(Self.deploy)/intentions-l7.json",
                                            certificates: (TestCertificates.path("storage.pem"), TestCertificates.path("storage.key"),
                                                           TestCertificates.path("ca.pem")),
                                            trustDomain: nil, allowRemoteUpstreams: false)
        #expect(findings.isEmpty, "\(findings.map(\.line))")
    }

    @Test("validate: every problem is found and named, not only the first")
    func everyProblem() {
        let service = Self.write("validate-service.json", #"{"service": {"name": "backup-agent", "port": 9100, "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_name": "storage", "local_bind_address": "0.0.0.0", "local_bind_port": 19100}]}}}}}"#)
        let intentions = Self.write("validate-intentions.json", #"[{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "a", "Action": "maybe"}]}]"#)
        let findings = ConfigValidation.run(serviceFile: service, intentionsFile: intentions,
                                            certificates: (TestCertificates.path("storage.pem"), TestCertificates.path("backup-agent.key"),
                                                           TestCertificates.path("ca.pem")),
                                            trustDomain: nil, allowRemoteUpstreams: false)
        let errors = findings.filter(\.isError)
        #expect(errors.count == 3, "\(findings.map(\.line))")
        #expect(errors.contains { $0.source == service && $0.message.contains("0.0.0.0") }, "\(findings.map(\.line))")
        #expect(errors.contains { $0.source == intentions && $0.message.lowercased().contains("action") }, "\(findings.map(\.line))")
        #expect(errors.contains { $0.message.contains("private key does not match") }, "\(findings.map(\.line))")
    }

    @Test("validate: unreadable, partial or missing input is an error; an unevaluable condition is a warning")
    func edges() {
        #expect(ConfigValidation.run(serviceFile: nil, intentionsFile: nil, certificates: (nil, nil, nil), trustDomain: nil,
                                     allowRemoteUpstreams: false).map(\.isError) == [true])
        let missing = ConfigValidation.run(serviceFile: "/nonexistent/s.json", intentionsFile: nil, certificates: (nil, nil, nil),
                                           trustDomain: nil, allowRemoteUpstreams: false)
        #expect(missing.count == 1 && missing[0].isError && missing[0].message.contains("cannot read"), "\(missing.map(\.line))")
        let partial = ConfigValidation.run(serviceFile: nil, intentionsFile: nil, certificates: (TestCertificates.path("storage.pem"), nil, nil),
                                           trustDomain: nil, allowRemoteUpstreams: false)
        #expect(partial.map(\.message) == ["give --cert, --key and --ca together"])
        let jwt = Self.write("validate-jwt.json", #"[{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}, "JWT": {"Providers": [{"Name": "okta"}]}}]}]}]"#)
        let warned = ConfigValidation.run(serviceFile: nil, intentionsFile: jwt, certificates: (nil, nil, nil), trustDomain: nil,
                                          allowRemoteUpstreams: false)
        #expect(warned.count == 1 && !warned[0].isError && warned[0].message.contains("JWT"), "\(warned.map(\.line))")
        let wrongDomain = ConfigValidation.run(serviceFile: nil, intentionsFile: nil,
                                               certificates: (TestCertificates.path("storage.pem"), TestCertificates.path("storage.key"),
                                                              TestCertificates.path("ca.pem")),
                                               trustDomain: "other.consul", allowRemoteUpstreams: false)
        #expect(wrongDomain.count == 1 && wrongDomain[0].isError, "\(wrongDomain.map(\.line))")
    }

    @Test("The real binary: intention check exits 0 allowed / 2 denied / 1 bad input; validate exits 2 with the list")
    func binary() async throws {
        let l7 = "\(Self.deploy)/intentions-l7.json"
        let allowed = try await ProcessRunner.run([SidecarBinary.path, "intention", "check", "backup-agent", "storage", "PUT",
                                                   "/repository/snap", "--intentions-file", l7], timeout: 30)
        #expect(allowed.status == 0 && allowed.output.hasPrefix("Allowed\ndecided by: PUT /repository/snap: intention"), "\(allowed.output)")
        let denied = try await ProcessRunner.run([SidecarBinary.path, "intention", "check", "backup-agent", "storage", "DELETE",
                                                  "/repository/snap", "--intentions-file", l7], timeout: 30)
        #expect(denied.status == 2 && denied.output.hasPrefix("Denied\n") && denied.output.contains("permission #1"), "\(denied.output)")
        let bad = try await ProcessRunner.run([SidecarBinary.path, "intention", "check", "a", "b", "GET",
                                               "--intentions-file", l7], timeout: 30)
        #expect(bad.status != 0 && bad.status != 2, "\(bad.output)")
        let noFile = try await ProcessRunner.run([SidecarBinary.path, "intention", "check", "a", "b",
                                                  "--intentions-file", "/nonexistent.json"], timeout: 30)
        #expect(noFile.status == 1 && noFile.output.contains("cannot read file"), "\(noFile.output)")

        let ok = try await ProcessRunner.run([SidecarBinary.path, "validate", "--service-file", "\(Self.deploy)/consul/backup-agent.json",
                                              "--intentions-file", "\(Self.deploy)/intentions-restic.json"], timeout: 30)
        #expect(ok.status == 0 && ok.output.hasSuffix("OK\n"), "\(ok.output)")
        let broken = try await ProcessRunner.run([SidecarBinary.path, "validate", "--service-file", "/nonexistent/s.json",
                                                  "--cert", TestCertificates.path("storage.pem"), "--key", TestCertificates.path("backup-agent.key"),
                                                  "--ca", TestCertificates.path("ca.pem")], timeout: 30)
        #expect(broken.status == 2, "\(broken.output)")
        #expect(broken.output.split(separator: "\n").filter { $0.hasPrefix("error: ") }.count == 2, "\(broken.output)")
    }

    @Test("The real binary: audit verify exits 0 on an intact chain, 1 naming the first broken line, 2 on an unreadable file")
    func auditVerify() async throws {
        let directory = try scratchDirectory("audit-verify")
        let path = "\(directory)/audit.jsonl"
        let sink = try JSONLinesAuditSink.file(at: path)
        for index in 0..<6 { sink.record(AuditEvent(kind: .connectionClosed, listener: "public", bytesIn: index)) }
        sink.flush()
        let intact = try await ProcessRunner.run([SidecarBinary.path, "audit", "verify", path], timeout: 30)
        #expect(intact.status == 0 && intact.output.contains("OK: 7 chained lines in 1 file(s)"), "\(intact.output)")
        let head = try #require(intact.output.split(separator: "\n").first { $0.hasPrefix("head") }?.split(separator: " ").last)
        let anchored = try await ProcessRunner.run([SidecarBinary.path, "audit", "verify", "--head", String(head), path], timeout: 30)
        #expect(anchored.status == 0, "\(anchored.output)")

        // Someone turns a byte count down on line 4: line 5 no longer links to it.
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let original = text.split(separator: "\n").map(String.init)
        var lines = original
        lines[3] = lines[3].replacingOccurrences(of: "\"bytes_in\":2", with: "\"bytes_in\":1")
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: false, encoding: .utf8)
        let broken = try await ProcessRunner.run([SidecarBinary.path, "audit", "verify", path], timeout: 30)
        #expect(broken.status == 1 && broken.output.hasPrefix("BROKEN at \(path):5: prev_hash does not match") && broken.output.contains("FAILED: 1 break(s)"), "\(broken.output)")
        // Dropping the last line passes the chain alone, not the head anchor.
        try (original.dropLast().joined(separator: "\n") + "\n").write(toFile: path, atomically: false, encoding: .utf8)
        let cut = try await ProcessRunner.run([SidecarBinary.path, "audit", "verify", "--head", String(head), path], timeout: 30)
        #expect(cut.status == 1 && cut.output.contains("lines were cut from the end"), "\(cut.output)")
        let missing = try await ProcessRunner.run([SidecarBinary.path, "audit", "verify", "\(directory)/none"], timeout: 30)
        #expect(missing.status == 2 && missing.output.contains("cannot read"), "\(missing.output)")
    }
}
