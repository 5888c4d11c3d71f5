import ArgumentParser
import FoundationEssentials
import SidecarCore
import SidecarTLS
import SidecarModel

/// `backup-sidecar intention check`: the decision for one source, destination and optionally
/// one request, against an intentions file, without running anything.
struct IntentionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "intention",
        abstract: "Offline intention tools.",
        subcommands: [Check.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print whether SRC may reach DST (and make METHOD PATH), and which intention or permission decides.",
            discussion: "Exit status as `consul intention check`: 0 allowed, 2 denied, 1 bad input. Names are NAME or NAMESPACE/NAME."
        )

        @Argument(help: "Source service.") var source: String
        @Argument(help: "Destination service.") var destination: String
        @Argument(help: "HTTP method (with PATH: decide one request by L7 permissions).") var method: String?
        @Argument(help: "Request path, as sent.") var path: String?

        @Option(name: .customLong("intentions-file"), help: "Intentions: a JSON array of service-intentions config entries.")
        var intentionsFile: String

        @Option(name: .customLong("default-intention"), help: "When no intention matches: allow or deny.")
        var defaultIntention: String = "deny"

        func run() throws {
            guard (method == nil) == (path == nil) else { throw failure("give both METHOD and PATH, or neither", status: 1) }
            guard let defaultAction = IntentionAction(rawValue: defaultIntention.lowercased()) else {
                throw failure("--default-intention must be allow or deny, not \"\(defaultIntention)\"", status: 1)
            }
            let outcome: IntentionCheck.Outcome
            do {
                let set = IntentionSet(try IntentionsFile.load(path: intentionsFile), defaultAction: defaultAction)
                outcome = try IntentionCheck.check(set, source: source, destination: destination, method: method, path: path)
            } catch {
                throw failure("\(error)", status: 1)
            }
            print(outcome.allowed ? "Allowed" : "Denied")
            print("decided by: \(outcome.explanation)")
            if !outcome.allowed { throw ExitCode(2) }
        }
    }
}

/// `backup-sidecar validate`: every problem in a service definition, intentions file and
/// certificates, found offline, each explained; exit 2 when there is one.
struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check a service definition, an intentions file and certificates offline; explain each problem (exit 2).",
        discussion: "Give any of them. Warnings (conditions this sidecar cannot evaluate, which deny) do not fail the check."
    )

    @Option(name: .customLong("service-file"), help: "Service definition (Consul's JSON format).") var serviceFile: String?
    @Option(name: .customLong("intentions-file"), help: "Intentions file.") var intentionsFile: String?
    @Option(name: .customLong("cert"), help: "Leaf certificate (PEM, intermediates after it).") var cert: String?
    @Option(name: .customLong("key"), help: "The leaf's private key (PEM).") var key: String?
    @Option(name: .customLong("ca"), help: "Trusted roots (PEM).") var ca: String?
    @Option(name: .customLong("trust-domain"), help: "Expected trust domain of the leaf's SPIFFE ID.") var trustDomain: String?
    @Flag(name: .customLong("allow-remote-upstreams"), help: "Upstream listeners may bind non-loopback addresses.")
    var allowRemoteUpstreams = false

    func run() throws {
        let findings = ConfigValidation.run(serviceFile: serviceFile, intentionsFile: intentionsFile,
                                            certificates: (cert, key, ca), trustDomain: trustDomain,
                                            allowRemoteUpstreams: allowRemoteUpstreams)
        for finding in findings { print(finding.line) }
        if findings.contains(where: \.isError) { throw ExitCode(ExitStatus.configuration) }
        print(findings.isEmpty ? "OK" : "OK (with warnings)")
    }
}

/// `backup-sidecar audit verify`: checks the audit log's hash chain over files given oldest
/// first and names the first line where it breaks.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Audit log tools.",
        subcommands: [Verify.self]
    )

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the prev_hash chain of audit log files (oldest first) and name the first broken line.",
            discussion: """
                Exit 0: every line links to the one before; 1: the chain is broken (every break is named); 2: a file \
                cannot be read. The chain alone cannot show lines cut from the end, or everything after some line \
                rewritten: pass the chain_head values the sidecar logged ("audit log opened/reopened/closed", "chain \
                head") as --anchor. See deploy/audit-schema.md.
                """
        )

        @Argument(help: "Audit log files, oldest first (audit.log.2 audit.log.1 audit.log).") var files: [String]
        @Option(name: .customLong("start"), help: "The prev_hash the first line must name (the head of an earlier verified file).")
        var start: String?
        @Option(name: .customLong("head"), help: "The hash the last line must have (the latest chain_head the sidecar logged).")
        var head: String?
        @Option(name: .customLong("anchor"), help: "A chain_head the sidecar logged (repeatable): it must be the hash of a line in FILES.")
        var anchors: [String] = []
        @Flag(name: .customLong("strict"), help: "A new chain (a sidecar that started on an empty log) counts as a break.")
        var strict = false

        func run() throws {
            var contents: [(name: String, bytes: [UInt8])] = []
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw failure("cannot read \(file)", status: ExitStatus.configuration)
                }
                contents.append((file, Array(data)))
            }
            let verdict = AuditChain.verify(files: contents, start: start?.lowercased(), head: head?.lowercased(),
                                            anchors: anchors.map { $0.lowercased() }, strict: strict)
            for found in verdict.breaks { print("BROKEN at \(found.location): \(found.reason)") }
            for restart in verdict.restarts where !strict {
                print("note: a new chain starts at \(restart) (a sidecar started on an empty log or on stdout); lines before it are not linked to it")
            }
            if start == nil && verdict.startsWith != AuditChain.genesis && verdict.lines > 0 {
                print("note: the first line follows a line not given (\(verdict.startsWith)); --start checks it against an earlier file's head")
            }
            let summary = "\(verdict.lines) chained lines in \(files.count) file(s)"
            guard verdict.intact else {
                print("FAILED: \(verdict.breaks.count) break(s); \(summary)")
                throw ExitCode(1)
            }
            print("OK: \(summary), every line linked to the one before")
            print("first line names: \(verdict.startsWith)")
            print("head (sha256 of the last line): \(verdict.head)")
        }
    }
}
