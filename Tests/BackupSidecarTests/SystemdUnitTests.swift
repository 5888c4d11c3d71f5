import Foundation
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
import TestSupport

/// deploy/systemd's units, checked by systemd's own tools and then run as systemd would run
/// them (no systemd as PID 1 here): ExecStart expanded by systemd's rules for what the units
/// use (`%i`, `${VAR}` as one word, `$VAR` split into words, Environment= then
/// EnvironmentFile=), CREDENTIALS_DIRECTORY and NOTIFY_SOCKET provided.
@Suite("systemd units", .serialized)
struct SystemdUnitTests {
    static let units = ["backup-sidecar@.service", "backup-sidecar-consul@.service"]

    static func unitText(_ name: String) throws -> String {
        try String(contentsOf: TestCertificates.repositoryRoot.appendingPathComponent("deploy/systemd/\(name)"), encoding: .utf8)
    }

    /// Settings of the [Service] section, continuation lines joined, in order.
    static func settings(_ text: String) -> [(String, String)] {
        text.replacingOccurrences(of: "\\\n", with: " ").split(separator: "\n").compactMap { line in
            guard !line.hasPrefix("#"), let equals = line.firstIndex(of: "=") else { return nil }
            return (String(line[..<equals]), String(line[line.index(after: equals)...]))
        }
    }

    /// The command line systemd would run for `instance`, with `environment` as systemd would
    /// build it from Environment= and the (given) EnvironmentFile= contents.
    static func commandLine(unit text: String, instance: String, environmentFile: [String: String],
                            extra: [String: String]) -> (arguments: [String], environment: [String: String]) {
        var environment: [String: String] = [:]
        var command = ""
        for (key, value) in settings(text) {
            switch key {
            case "Environment":
                for assignment in value.split(separator: " ") {
                    let parts = assignment.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    environment[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
                }
            case "EnvironmentFile": environment.merge(environmentFile) { $1 }
            case "ExecStart": command = value
            default: break
            }
        }
        environment.merge(extra) { $1 }
        var arguments: [String] = []
        for word in command.replacingOccurrences(of: "%i", with: instance).split(separator: " ") {
            if word.hasPrefix("$") && !word.hasPrefix("${") {
                arguments += (environment[String(word.dropFirst())] ?? "").split(separator: " ").map(String.init)
                continue
            }
            var expanded = String(word)
            while let open = expanded.range(of: "${"), let close = expanded[open.upperBound...].firstIndex(of: "}") {
                let name = String(expanded[open.upperBound..<close])
                expanded.replaceSubrange(open.lowerBound...close, with: environment[name] ?? "")
            }
            arguments.append(expanded)
        }
        return (arguments, environment)
    }

    static func exposure(_ path: String) async throws -> Double? {
        let run = try await ProcessRunner.run(["systemd-analyze", "security", "--offline=true", path], timeout: 60)
        guard let line = run.output.split(separator: "\n").first(where: { $0.contains("Overall exposure level") }) else { return nil }
        return line.split(separator: " ").compactMap { Double($0) }.first
    }

    @Test("systemd-analyze: both units verify, and their exposure is at most 2.0", arguments: units)
    func analyzed(unit: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("units-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // verify checks that ExecStart exists: point it at the binary under test.
        let instance = "\(directory)/\(unit.replacingOccurrences(of: "@.", with: "@storage."))"
        try Self.unitText(unit).replacingOccurrences(of: "/usr/bin/backup-sidecar", with: SidecarBinary.path)
            .write(toFile: instance, atomically: true, encoding: .utf8)
        let verify = try await ProcessRunner.run(["systemd-analyze", "verify", instance], timeout: 60)
        #expect(verify.status == 0 && verify.output.isEmpty, "\(verify.output)")
        let level = try #require(try await Self.exposure(instance))
        #expect(level <= 2.0, "exposure \(level)")

        let text = try Self.unitText(unit)
        let keys = Set(Self.settings(text).map(\.0))
        #expect(keys.isSuperset(of: ["Type", "RestartPreventExitStatus", "RuntimeDirectory", "EnvironmentFile", "ExecReload"]))
        #expect(text.contains("Type=notify") && text.contains("RestartPreventExitStatus=2"))
        #expect(text.contains("EnvironmentFile=-/etc/backup-sidecar/%i.env"))
        let execStart = Self.settings(text).first { $0.0 == "ExecStart" }?.1.split(separator: " ") ?? []
        #expect(!text.contains("CONSUL_HTTP_TOKEN") && !execStart.contains("-token") && !execStart.contains("--token"),
                "no token in the environment or arguments")
    }

    /// A hardened unit that still scores well is the point of the check: a weakened copy must fail it.
    @Test("The exposure check notices a weakened unit")
    func exposureCheckCanFail() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("weak-\(UUID().uuidString)@storage.service").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let weak = try Self.unitText(Self.units[0]).split(separator: "\n")
            .filter { !["DynamicUser", "CapabilityBoundingSet", "ProtectSystem", "SystemCallFilter", "RestrictAddressFamilies"]
                .contains(where: $0.hasPrefix) }
            .joined(separator: "\n")
        try weak.write(toFile: path, atomically: true, encoding: .utf8)
        #expect((try await Self.exposure(path) ?? 0) > 2.0)
    }

    @Test("File mode as systemd runs it: two instances with their own .env start side by side, each notifies READY=1")
    func fileModeInstances() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("unit-root-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let text = try Self.unitText("backup-sidecar@.service")
            .replacingOccurrences(of: "/usr/bin/backup-sidecar", with: SidecarBinary.path)
            .replacingOccurrences(of: "/etc/backup-sidecar/", with: "\(root)/etc/")
            .replacingOccurrences(of: "/var/log/backup-sidecar/", with: "\(root)/log/")
        try FileManager.default.createDirectory(atPath: "\(root)/log", withIntermediateDirectories: true)
        var running: [(SidecarProcess, NotifySocketListener, Int, Int)] = []
        for instance in ["storage", "storage-b"] {
            let directory = "\(root)/etc/\(instance)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let port = freeLocalPort(), adminPort = freeLocalPort()
            try """
                {"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "port": \(port), "address": "127.0.0.1",
                  "proxy": {"destination_service_name": "storage", "local_service_port": 9}}}
                """.write(toFile: "\(directory)/service.json", atomically: true, encoding: .utf8)
            try FileManager.default.copyItem(atPath: TestCertificates.repositoryRoot.appendingPathComponent("deploy/intentions.json").path,
                                             toPath: "\(directory)/intentions.json")
            for (name, source) in [("cert.pem", "storage.pem"), ("key.pem", "storage.key"), ("roots.pem", "ca.pem")] {
                try FileManager.default.copyItem(atPath: TestCertificates.path(source), toPath: "\(directory)/\(name)")
            }
            let notify = try NotifySocketListener(abstract: true)
            let (arguments, environment) = Self.commandLine(unit: text, instance: instance,
                                                             environmentFile: ["ADMIN_BIND": "127.0.0.1:\(adminPort)"],
                                                             extra: ["NOTIFY_SOCKET": notify.name])
            #expect(arguments.first == SidecarBinary.path)
            let process = try SidecarProcess(Array(arguments.dropFirst()), logName: "unit-\(instance).log", environment: environment)
            running.append((process, notify, port, adminPort))
        }
        for (process, notify, port, adminPort) in running {
            let ready = await notify.receive()
            if ready?.contains("READY=1") != true {
                Issue.record("no READY=1 (\(ready ?? "nothing")): \(await process.terminate().log)")
                continue
            }
            #expect((try? BlockingSocket(port: port)) != nil)
            #expect(try await AdminHTTP.get(adminPort, "/ready").status == "200")
        }
        for (process, _, _, _) in running {
            #expect(await process.terminate().status == 0)
        }
        #expect(FileManager.default.fileExists(atPath: "\(root)/log/storage-audit.jsonl"))
    }

    @Test("Consul mode as systemd runs it: the token arrives as a credential file; a bad config exits 2 (no restart loop)")
    func consulModeUnit() async throws {
        let token = "unit-credential-token"
        let mesh = try await ConsulMesh.start(aclToken: token)
        try await withTeardown({ await mesh.stop() }) {
            let backend = try await TestBackend(.echo, group: testGroup)
            try await withTeardown({ await backend.stop() }) {
                let sidecarPort = freeLocalPort()
                try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: sidecarPort)
                let credentials = FileManager.default.temporaryDirectory.appendingPathComponent("credentials-\(UUID().uuidString)").path
                try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: credentials) }
                try (token + "\n").write(toFile: "\(credentials)/consul-token", atomically: true, encoding: .utf8)
                let text = try Self.unitText("backup-sidecar-consul@.service")
                    .replacingOccurrences(of: "/var/log/backup-sidecar/", with: "\(SidecarBinary.scratch)/")
                #expect(text.contains("LoadCredential=consul-token:/etc/backup-sidecar/%i.token"))

                let notify = try NotifySocketListener(abstract: false)
                let (arguments, environment) = Self.commandLine(unit: text, instance: "storage",
                                                                 environmentFile: ["CONSUL_HTTP_ADDR": "127.0.0.1:\(mesh.port)"],
                                                                 extra: ["NOTIFY_SOCKET": notify.name, "CREDENTIALS_DIRECTORY": credentials])
                #expect(!arguments.contains(token))
                let process = try SidecarProcess(Array(arguments.dropFirst()), logName: "unit-consul.log", environment: environment)
                let ready = await notify.receive()
                #expect(ready?.contains("READY=1") == true, "\(ready ?? "nothing")")
                #expect((try? BlockingSocket(port: sidecarPort)) != nil)
                let (status, log) = await process.terminate()
                #expect(status == 0 && !log.contains(token), "\(log)")

                // A configuration error (here: no such drain timeout) is exit 2, which the unit does not restart.
                let (badArguments, badEnvironment) = Self.commandLine(unit: text, instance: "storage",
                                                                       environmentFile: ["DRAIN_TIMEOUT": "soon"],
                                                                       extra: ["CREDENTIALS_DIRECTORY": credentials])
                let bad = try SidecarProcess(Array(badArguments.dropFirst()), logName: "unit-consul-bad.log", environment: badEnvironment)
                let badExit = await bad.exit()
                #expect(badExit.status == 2, "\(badExit.log)")
            }
        }
    }
}
