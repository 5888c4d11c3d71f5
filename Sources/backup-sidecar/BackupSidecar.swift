import ArgumentParser
import ConsulAgent
import CSystemExtras
import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarCore
import SidecarMux
import SidecarTLS
import SidecarModel

struct BackupSidecar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup-sidecar",
        abstract: "Consul Connect mTLS sidecar for backup traffic.",
        version: BuildInfo.text,
        subcommands: [Run.self, ValidateCommand.self, IntentionCommand.self, AuditCommand.self, DevAgentCommand.self]
    )
}

/// Exit codes (documented in README).
enum ExitStatus {
    static let configuration: Int32 = 2
    static let listener: Int32 = 3
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run both sidecar roles: the public mTLS listener and the upstream listeners."
    )

    // Consul mode (like `consul connect proxy`; Consul's single-dash spellings accepted too).
    @Option(name: [.customLong("sidecar-for"), .customLong("sidecar-for", withSingleDash: true)],
            help: "Consul mode: run as the sidecar proxy registered for this service ID (any letter case; env CONNECT_SIDECAR_FOR).")
    var sidecarFor: String?

    @Option(name: [.customLong("proxy-id"), .customLong("proxy-id", withSingleDash: true)],
            help: "Consul mode: run as this connect-proxy registration (env CONNECT_PROXY_ID).")
    var proxyID: String?

    @Option(name: [.customLong("http-addr"), .customLong("http-addr", withSingleDash: true)],
            help: "Consul agent address (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500): HOST:PORT, http://, https://, unix:///path.")
    var httpAddr: String?

    @Option(name: [.customLong("token"), .customLong("token", withSingleDash: true)],
            help: "Consul ACL token (default: CONSUL_HTTP_TOKEN). Prefer -token-file: arguments are visible to other users.")
    var token: String?

    @Option(name: [.customLong("token-file"), .customLong("token-file", withSingleDash: true)],
            help: "File holding the Consul ACL token, re-read before each request (default: CONSUL_HTTP_TOKEN_FILE).")
    var tokenFile: String?

    @OptionGroup var login: LoginOptions

    @Option(name: .customLong("startup-timeout"),
            help: "Consul mode: how long to wait for the agent, the registration and the first certificates at startup (Go duration).")
    var startupTimeout: String = "60s"

    // File mode.
    @Option(name: .customLong("service-file"), help: "File mode: Consul service definition (connect-proxy registration or a service with connect.sidecar_service).")
    var serviceFile: String?

    @Option(help: "File mode: leaf certificate PEM; intermediates may follow the leaf and are sent to peers.")
    var cert: String?

    @Option(help: "File mode: private key PEM for the leaf.")
    var key: String?

    @Option(help: "File mode: trusted root certificates PEM (several allowed, e.g. during CA rotation).")
    var ca: String?

    @Option(name: .customLong("intentions-file"), help: "JSON array of Consul service-intentions config entries.")
    var intentionsFile: String?

    @Option(name: .customLong("default-intention"), help: "Decision when no intention matches: allow or deny (Consul mode: the agent's DefaultIntentionPolicy wins when it reports one).")
    var defaultIntention: String = "deny"

    @Option(name: .customLong("upstream-endpoint"), help: "Static instance for an upstream: NAME=HOST:PORT (repeatable; several per NAME are used in turn).")
    var upstreamEndpoints: [String] = []

    @Option(name: .customLong("trust-domain"), help: "SPIFFE trust domain (default: from the root CA's spiffe:// URI SAN).")
    var trustDomain: String?

    @Option(help: "Our datacenter, the default for upstreams that name none.")
    var datacenter: String = "dc1"

    @Option(name: .customLong("audit-log"), help: "Audit log destination: '-' for stdout or a file path (JSON lines).")
    var auditLog: String = "-"

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Flag(name: .customLong("allow-remote-upstreams"), help: "Let upstream listeners bind non-loopback addresses (they lend this sidecar's identity to whoever connects).")
    var allowRemoteUpstreams = false

    @Option(name: .customLong("log-format"), help: "text (for terminals) or json (one object per line, for log shippers).")
    var logFormat: String = "text"

    @Option(name: .customLong("admin-bind"), help: "Admin listener for /metrics /ready /live /certs /config, HOST:PORT or off.")
    var adminBind: String = "127.0.0.1:19000"

    @Option(help: "Event-loop threads (default: one per core, at most 4).")
    var threads: Int?

    @Option(name: .customLong("drain-timeout"), help: "On SIGTERM/SIGINT, how long in-flight transfers may take to finish (Go duration, e.g. 10m).")
    var drainTimeout: String = "10m"

    @Option(name: .customLong("max-connections"), help: "Open connections per listener before accepting pauses (overrides proxy config max_connections; default 4096).")
    var maxConnections: Int?

    @Option(name: .customLong("idle-timeout"), help: "Close connections idle this long (overrides proxy config idle_timeout; default 1h).")
    var idleTimeout: String?

    @Option(help: "Tunnels to other backup-sidecars: prefer (HTTP/2 streams on pooled mTLS connections, ALPN \(MuxProtocol.alpn); peers without it get plain connections) or off (one mTLS connection per tunnel, never offered or accepted).")
    var mux: MuxMode = .prefer

    /// CONNECT_PROXY_ID / CONNECT_SIDECAR_FOR stand in for the flags, as for `consul connect
    /// proxy` (the proxy ID first), unless a mode was chosen on the command line.
    mutating func validate() throws {
        let environment = ProcessInfo.processInfo.environment
        guard sidecarFor == nil, proxyID == nil, serviceFile == nil else { return }
        if let id = environment["CONNECT_PROXY_ID"], !id.isEmpty {
            proxyID = id
        } else if let service = environment["CONNECT_SIDECAR_FOR"], !service.isEmpty {
            sidecarFor = service
        }
    }

    func run() async throws {
        BrokenPipes.ignore()
        MemoryTuning.apply()
        // Before anything binds: a SIGTERM during startup must take the drain path, not the
        // default action.
        let signals = SignalHandling()
        try bootstrapLogging(level: logLevel, format: logFormat)
        let adminEndpoint: Endpoint?
        if adminBind == "off" {
            adminEndpoint = nil
        } else if let endpoint = Endpoint(parsing: adminBind, allowingPortZero: true) {
            adminEndpoint = endpoint
        } else {
            throw failure("--admin-bind must be HOST:PORT or off, not \"\(adminBind)\"", status: ExitStatus.configuration)
        }
        guard let drainNs = ConfigDuration.parse(drainTimeout) else {
            throw failure("--drain-timeout \"\(drainTimeout)\" is not a duration such as 10m", status: ExitStatus.configuration)
        }
        let logger = Logger(label: "backup-sidecar")
        let threadCount = threads ?? min(System.coreCount, 4)
        guard (1...64).contains(threadCount) else { throw failure("--threads must be between 1 and 64", status: ExitStatus.configuration) }
        guard let defaultAction = IntentionAction(rawValue: defaultIntention.lowercased()) else {
            throw failure("--default-intention must be allow or deny, not \"\(defaultIntention)\"", status: ExitStatus.configuration)
        }
        let metrics = SidecarMetrics()
        let audit: JSONLinesAuditSink
        do {
            let lost: @Sendable (Int) -> Void = { metrics.auditLinesLost($0) }
            audit = auditLog == "-" ? try JSONLinesAuditSink(logger: logger, linesLost: lost)
                : try JSONLinesAuditSink.file(at: auditLog, logger: logger, linesLost: lost)
        } catch {
            throw failure("\(error)", status: ExitStatus.configuration)
        }
        // Audit lines are written in the background: every one recorded goes out before exit,
        // and the chain head is logged as the anchor of the file as left.
        defer { audit.finish() }
        metrics.recordBuildInfo(BuildInfo.labels)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threadCount)
        let running: RunningSidecar
        if sidecarFor != nil || proxyID != nil {
            running = try await startConsulMode(defaultAction: defaultAction, audit: audit, metrics: metrics,
                                                logger: logger, group: group)
        } else {
            running = try await startFileMode(defaultAction: defaultAction, audit: audit, metrics: metrics,
                                              logger: logger, group: group)
        }
        let sidecar = running.sidecar
        if let adminEndpoint {
            do {
                let admin = try await AdminServer.start(host: adminEndpoint.host, port: adminEndpoint.port, sidecar: sidecar,
                                                        metrics: metrics, group: group)
                logger.info("admin listener", metadata: ["address": "\(adminEndpoint.host):\(admin.port)"])
            } catch {
                await running.stopSources()
                throw failure("\(error)", status: ExitStatus.listener)
            }
        }
        let credentials = sidecar.currentCredentials
        logger.info("sidecar running", metadata: [
            "identity": "\(credentials.identity)", "serial": "\(credentials.leaf.serialNumber)",
        ])
        // SIGHUP also reopens the audit log by its path (logrotate's `create` mode).
        signals.onReload = {
            running.reload()
            audit.reopen()
        }
        // Type=notify: systemd starts dependent units (the backup agent) only now.
        let systemd = SystemdNotifier(environment: ProcessInfo.processInfo.environment)
        systemd.ready(status: "serving as \(credentials.identity)")
        await signals.firstTermination()
        systemd.stopping(status: "draining in-flight transfers (up to \(drainTimeout))")
        await running.stopSources()
        // Drain; a second SIGTERM/SIGINT cuts it short (what is left is aborted, not closed
        // cleanly, so no peer mistakes it for a finished transfer).
        let drain = Task { await sidecar.drain(timeout: .nanoseconds(drainNs)) }
        signals.onLaterTermination = {
            logger.warning("second signal: not waiting for the drain")
            drain.cancel()
        }
        _ = await drain.value
        try? await group.shutdownGracefully()
    }
}

/// One logging setup for every subcommand: text for terminals, JSON lines for shippers.
func bootstrapLogging(level text: String, format: String) throws {
    guard let level = Logger.Level(rawValue: text) else {
        throw failure("invalid --log-level \"\(text)\"", status: ExitStatus.configuration)
    }
    guard ["text", "json"].contains(format) else {
        throw failure("--log-format must be text or json, not \"\(format)\"", status: ExitStatus.configuration)
    }
    let json = format == "json"
    LoggingSystem.bootstrap { label in
        if json { return JSONLogHandler(label: label, level: level) }
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

/// Prints the startup error and returns the exit code to throw: unwinding (rather than
/// exit() from inside async code) lets everything be released.
func failure(_ message: String, status: Int32) -> ExitCode {
    StandardError.write("backup-sidecar: error: \(message)\n")
    return ExitCode(status)
}

extension MuxMode: ExpressibleByArgument {}
