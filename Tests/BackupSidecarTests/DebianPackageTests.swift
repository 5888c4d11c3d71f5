import Foundation
import Glibc
@testable import SidecarTLS
import Testing
import TestFixtures
import TestSupport

/// The Debian package scripts/package.sh builds (scripts/test.sh builds it into
/// .build/test-dist before the suite, so its release build does not compete with timed tests).
@Suite("Debian package", .serialized)
struct DebianPackageTests {
    static let distDirectory = TestCertificates.repositoryRoot.appendingPathComponent(".build/test-dist").path

    static func package() throws -> String { try package(named: "backup-sidecar") }

    /// The symbols package built beside it.
    static func symbolsPackage() throws -> String { try package(named: "backup-sidecar-dbgsym") }

    static func package(named name: String) throws -> String {
        let debs = (try? FileManager.default.contentsOfDirectory(atPath: distDirectory))?
            .filter { $0.hasPrefix("\(name)_") && $0.hasSuffix(".deb") } ?? []
        guard debs.count == 1 else {
            throw PackageMissing(description: "expected one \(name) .deb in \(distDirectory), found \(debs): run scripts/package.sh .build/test-dist (scripts/test.sh does)")
        }
        return "\(distDirectory)/\(debs[0])"
    }

    struct PackageMissing: Error, CustomStringConvertible { let description: String }

    static func run(_ arguments: [String], input: Data? = nil) async throws -> (status: Int32, output: String) {
        let result = try await ProcessRunner.run(arguments, input: input, timeout: 120)
        return (result.status, result.output)
    }

    /// The package extracted into a fresh root.
    static func extracted() async throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("deb-root-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let extract = try await run(["dpkg-deb", "-x", try package(), root])
        #expect(extract.status == 0, "\(extract.output)")
        return root
    }

    /// `--version` of the binary the suite built: the package must be of the same commit.
    static func builtVersion() async throws -> [String] {
        try await run([SidecarBinary.path, "--version"]).output.split(separator: "\n").map(String.init)
    }

    @Test("dpkg-deb --info and --contents: name, version of this build, Depends, binary, units, examples, man page")
    func infoAndContents() async throws {
        let deb = try Self.package()
        let version = try await Self.builtVersion()[0].split(separator: " ")[1]
        #expect(deb.hasSuffix("/backup-sidecar_\(version)_amd64.deb"))
        let info = try await Self.run(["dpkg-deb", "--info", deb]).output
        #expect(info.contains(" Package: backup-sidecar\n") && info.contains(" Version: \(version)\n") && info.contains(" Architecture: amd64\n"))
        let depends = try #require(info.split(separator: "\n").first { $0.hasPrefix(" Depends: ") })
        for library in ["libc6", "libssl3", "libnghttp2-14"] {
            #expect(depends.contains(library), "\(depends)")
        }
        let contents = try await Self.run(["dpkg-deb", "--contents", deb]).output
        for path in ["./usr/bin/backup-sidecar", "./lib/systemd/system/backup-sidecar@.service",
                     "./lib/systemd/system/backup-sidecar-consul@.service", "./usr/share/doc/backup-sidecar/copyright",
                     "./usr/share/doc/backup-sidecar/changelog.gz", "./usr/share/man/man1/backup-sidecar.1.gz",
                     "./usr/share/doc/backup-sidecar/examples/intentions.json",
                     "./usr/share/doc/backup-sidecar/examples/consul/storage.json",
                     "./usr/share/doc/backup-sidecar/examples/prometheus/alerts.yml",
                     "./usr/share/doc/backup-sidecar/examples/grafana/backup-sidecar.json"] {
            #expect(contents.contains(" \(path)\n"), "missing \(path)")
        }
        #expect(contents.contains("-rwxr-xr-x root/root") && !contents.contains("/opt/swift"))
    }

    /// The shipped binary exports no dynamic symbols and is stripped: without this package a
    /// core dump shows bare addresses.
    @Test("The -dbgsym package: gdb names the stripped binary's functions through its build ID")
    func symbolsByBuildID() async throws {
        let symbols = try Self.symbolsPackage()
        let info = try await Self.run(["dpkg-deb", "--info", symbols]).output
        let version = try await Self.builtVersion()[0].split(separator: " ")[1]
        #expect(info.contains(" Depends: backup-sidecar (= \(version))\n"), "\(info)")
        let root = try await Self.extracted()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try await Self.run(["dpkg-deb", "-x", symbols, root]).status == 0)
        let binary = "\(root)/usr/bin/backup-sidecar"
        let notes = try await Self.run(["readelf", "-n", binary]).output
        let buildID = try #require(notes.split(separator: "\n").first { $0.contains("Build ID:") }?
            .split(separator: " ").last.map(String.init))
        let debugFile = "\(root)/usr/lib/debug/.build-id/\(buildID.prefix(2))/\(buildID.dropFirst(2)).debug"
        #expect(FileManager.default.fileExists(atPath: debugFile), "no \(debugFile)")
        // The binary itself names nothing; the pump's address, taken from the debug file, is
        // named by gdb once it looks in the package's debug directory.
        let pump = try #require(try await Self.run(["nm", debugFile]).output.split(separator: "\n")
            .first { $0.hasSuffix(" $s10SidecarMux0B17ConnectionHandlerC4pumpyyF") }?.split(separator: " ").first.map(String.init))
        #expect(try await Self.run(["nm", binary]).output.contains("no symbols"))
        let named = try await Self.run(["gdb", "-q", "-batch", "-iex", "set debug-file-directory \(root)/usr/lib/debug",
                                        "-ex", "info symbol 0x\(pump)", binary]).output
        #expect(named.contains("ConnectionHandlerC4pumpyyF in section .text"), "\(named)")
    }

    @Test("lintian, on both packages: no errors and no warnings")
    func lintian() async throws {
        let result = try await Self.run(["lintian", "--tag-display-limit", "0", try Self.package(), try Self.symbolsPackage()])
        let findings = result.output.split(separator: "\n").filter { $0.hasPrefix("E: ") || $0.hasPrefix("W: ") }
        #expect(findings.isEmpty, "\(findings)")
        #expect(result.status == 0, "\(result.output)")
    }

    @Test("Extracted: every library ldd resolves belongs to a package in Depends; --version runs without the toolchain")
    func librariesAreDeclared() async throws {
        let root = try await Self.extracted()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let binary = "\(root)/usr/bin/backup-sidecar"
        let info = try await Self.run(["dpkg-deb", "--field", try Self.package(), "Depends"]).output
        let declared = Set(info.split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")[0] }.map(String.init))
        // Without the toolchain's library directory on any path: what ldd resolves is what a backup host needs.
        let ldd = try await Self.run(["env", "-u", "LD_LIBRARY_PATH", "ldd", binary])
        #expect(ldd.status == 0, "\(ldd.output)")
        #expect(!ldd.output.contains("not found") && !ldd.output.contains("libswift") && !ldd.output.contains("libFoundation"), "\(ldd.output)")
        var resolved: [String] = []
        for line in ldd.output.split(separator: "\n") {
            let fields = line.split(whereSeparator: \.isWhitespace)
            if let arrow = fields.firstIndex(of: "=>"), arrow + 1 < fields.count, fields[arrow + 1].hasPrefix("/") {
                resolved.append(String(fields[arrow + 1]))
            } else if let first = fields.first, first.hasPrefix("/") {
                resolved.append(String(first)) // the dynamic loader
            }
        }
        #expect(resolved.count >= 6, "\(ldd.output)")
        for library in resolved {
            // dpkg records the path it installed; /lib may be a link to /usr/lib (merged /usr).
            var owner = try await Self.run(["dpkg-query", "-S", library])
            for candidate in [URL(fileURLWithPath: library).resolvingSymlinksInPath().path, "/usr" + library] where owner.status != 0 {
                owner = try await Self.run(["dpkg-query", "-S", candidate])
            }
            let package = owner.output.split(separator: ":").first.map(String.init) ?? "?"
            #expect(owner.status == 0 && declared.contains(package), "\(library) is from \(package), not in Depends \(declared)")
        }
        let version = try await Self.run(["env", "-i", binary, "--version"])
        #expect(version.status == 0)
        let built = try await Self.builtVersion()
        #expect(version.output.split(separator: "\n").map(String.init) == built,
                "the package is from another build than the suite's (\(built.first ?? "?")): run scripts/package.sh .build/test-dist, as scripts/test.sh does")
    }

    /// RE2, libstdc++ and libgcc are linked from static archives (Package.swift,
    /// scripts/shipped-build.sh): the package neither loads nor depends on them, names their
    /// sources for security tracking, and its RE2 still decides PathRegex as RE2 does.
    @Test("Extracted: no shared C++ runtime or RE2; Static-Built-Using names them; PathRegex works")
    func staticCxxRuntime() async throws {
        let deb = try Self.package()
        let depends = try await Self.run(["dpkg-deb", "--field", deb, "Depends"]).output
        for library in ["libre2", "libstdc++", "libgcc-s"] {
            #expect(!depends.contains(library), "\(depends)")
        }
        let staticSources = try await Self.run(["dpkg-deb", "--field", deb, "Static-Built-Using"]).output
        for source in ["gcc-12 (= ", "re2 (= "] {
            #expect(staticSources.contains(source), "Static-Built-Using: \(staticSources)")
        }
        let root = try await Self.extracted()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let binary = "\(root)/usr/bin/backup-sidecar"
        let needed = try await Self.run(["readelf", "-d", binary]).output
        for library in ["libre2", "libstdc++", "libgcc_s"] {
            #expect(!needed.contains(library), "\(needed)")
        }
        func intentions(pathRegex: String) throws -> String {
            let path = "\(root)/intentions-\(pathRegex.count).json"
            let permission: [String: Any] = ["Action": "allow", "HTTP": ["PathRegex": pathRegex]]
            let entry: [String: Any] = ["Kind": "service-intentions", "Name": "storage",
                                        "Sources": [["Name": "backup-agent", "Permissions": [permission]]]]
            try JSONSerialization.data(withJSONObject: [entry]).write(to: URL(fileURLWithPath: path))
            return path
        }
        let valid = try intentions(pathRegex: "/snapshots/[0-9a-f]{8}")
        func check(_ path: String, _ file: String) async throws -> (status: Int32, output: String) {
            try await Self.run(["env", "-i", binary, "intention", "check", "backup-agent", "storage", "GET", path,
                                "--intentions-file", file])
        }
        let allowed = try await check("/snapshots/0123abcd", valid)
        #expect(allowed.status == 0 && allowed.output.hasPrefix("Allowed"), "\(allowed.output)")
        // RE2 matches the whole path: a longer or upper-case name is no match, so denied.
        for path in ["/snapshots/0123abcd/extra", "/snapshots/0123ABCD", "/x/snapshots/0123abcd"] {
            let denied = try await check(path, valid)
            #expect(denied.status == 2 && denied.output.hasPrefix("Denied"), "\(path): \(denied.output)")
        }
        // RE2's own parser rejects the pattern, with its message.
        let broken = try await check("/snapshots/0123abcd", try intentions(pathRegex: "/snapshots/(["))
        #expect(broken.status == 1 && broken.output.contains("missing ]"), "\(broken.output)")
    }

    @Test("Extracted: a file-mode round trip with the packaged example files (ports moved to free ones)")
    func fileModeRoundTrip() async throws {
        let root = try await Self.extracted()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let binary = "\(root)/usr/bin/backup-sidecar"
        let examples = "\(root)/usr/share/doc/backup-sidecar/examples"
        let backend = try await TestBackend(.repository, group: testGroup)
        try await withTeardown({ await backend.stop() }) {
            let storagePublic = freeLocalPort(), agentPublic = freeLocalPort(), upstreamPort = freeLocalPort()

            // Only the ports change: the example's service, sidecar and upstream bind ports.
            func moved(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
                var object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(examples)/consul/\(name)"))) as? [String: Any])
                edit(&object)
                let path = "\(root)/\(name)"
                try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
                return path
            }
            func setPorts(_ object: inout [String: Any], service: Int, sidecar: Int, upstream: Int?) {
                var service_ = object["service"] as! [String: Any]
                service_["port"] = service
                var connect = service_["connect"] as! [String: Any]
                var sidecarService = connect["sidecar_service"] as! [String: Any]
                sidecarService["port"] = sidecar
                if let upstream {
                    var proxy = sidecarService["proxy"] as! [String: Any]
                    var upstreams = proxy["upstreams"] as! [[String: Any]]
                    upstreams[0]["local_bind_port"] = upstream
                    proxy["upstreams"] = upstreams
                    sidecarService["proxy"] = proxy
                }
                connect["sidecar_service"] = sidecarService
                service_["connect"] = connect
                object["service"] = service_
            }
            let storageFile = try moved("storage.json") { setPorts(&$0, service: backend.port, sidecar: storagePublic, upstream: nil) }
            let agentFile = try moved("backup-agent.json") { setPorts(&$0, service: freeLocalPort(), sidecar: agentPublic, upstream: upstreamPort) }

            func start(_ service: String, _ name: String, extra: [String]) throws -> Process {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments = ["run", "--admin-bind", "off", "--service-file", service, "--intentions-file", "\(examples)/intentions.json",
                                     "--cert", TestCertificates.path("\(name).pem"), "--key", TestCertificates.path("\(name).key"),
                                     "--ca", TestCertificates.path("ca.pem"), "--audit-log", "\(root)/\(name)-audit.jsonl"] + extra
                process.environment = [:] // nothing from the toolchain's environment
                process.standardOutput = FileHandle.nullDevice
                process.standardError = FileHandle(forWritingAtPath: "/dev/null")
                try process.run()
                return process
            }
            let storage = try start(storageFile, "storage", extra: [])
            defer { storage.forceStop() }
            let agent = try start(agentFile, "backup-agent", extra: ["--upstream-endpoint", "storage=127.0.0.1:\(storagePublic)"])
            defer { agent.forceStop() }
            // Only the public port is probed: a bare connection to the upstream port would open a
            // tunnel that the drain at the end rightly waits for. curl retries until it listens.
            #expect(await eventually(timeout: 30) { (try? BlockingSocket(port: storagePublic)) != nil })

            let snapshot = secureRandomBytes(1 << 20)
            let file = "\(root)/snapshot.bin"
            try Data(snapshot).write(to: URL(fileURLWithPath: file))
            let put = try await Self.run(["curl", "-sS", "--retry", "5", "--retry-connrefused", "-X", "PUT", "--data-binary", "@\(file)",
                                          "http://127.0.0.1:\(upstreamPort)/repository/snap-1"])
            let digest = SHA256Digest()
            digest.update(snapshot)
            #expect(put.output.contains("PUT /repository/snap-1 \(snapshot.count) \(digest.finalizeHex())"), "\(put.output)")
            #expect(backend.requests == ["PUT /repository/snap-1"])
            // Lines are written by the audit writer thread, maybe just after the response.
            let auditPath = "\(root)/storage-audit.jsonl"
            func audited() -> String { (try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? "" }
            #expect(await eventually { audited().contains("\"decision\":\"allow\"") && audited().contains("svc/backup-agent") }, "\(audited())")
            for process in [agent, storage] {
                kill(process.processIdentifier, SIGTERM)
                let status = await onThread { () -> Int32 in process.waitUntilExit(); return process.terminationStatus }
                #expect(status == 0)
            }
        }
    }
}
