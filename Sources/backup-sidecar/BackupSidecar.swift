import ArgumentParser
import ConsulAgent
import CSystemExtras
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SidecarCore
import SidecarMux
import SidecarTLS
import SidecarModel

@main
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
            audit = auditLog == "-" ? JSONLinesAuditSink(logger: logger, linesLost: lost)
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

    /// A started sidecar and whatever feeds it (files or the Consul agent).
    struct RunningSidecar {
        var sidecar: Sidecar
        var reload: @Sendable () -> Void
        var stopSources: @Sendable () async -> Void
    }

    private func startFileMode(defaultAction: IntentionAction, audit: any AuditSink, metrics: SidecarMetrics,
                               logger: Logger, group: EventLoopGroup) async throws -> RunningSidecar {
        guard let serviceFile, let cert, let key, let ca else {
            throw failure("give either -sidecar-for/-proxy-id (Consul mode) or --service-file, --cert, --key and --ca (file mode)",
                          status: ExitStatus.configuration)
        }
        let settings: SidecarSettings
        let intentionsSource: IntentionsFileSource?
        let certificateSource: CertificateFileSource
        let runningSidecar = NIOLockedValueBox<Sidecar?>(nil)
        do {
            certificateSource = CertificateFileSource(certificatePath: cert, keyPath: key, rootsPath: ca,
                                                      trustDomain: trustDomain, logger: logger) { credentials in
                try runningSidecar.withLockedValue { $0 }?.updateCredentials(credentials)
            }
            (settings, intentionsSource) = try loadSettings(serviceFile: serviceFile, credentials: try certificateSource.load(),
                                                            defaultAction: defaultAction, audit: audit, metrics: metrics,
                                                            logger: logger) { set in
                runningSidecar.withLockedValue { $0 }?.updateIntentions(set)
            }
        } catch {
            throw failure("\(error)", status: ExitStatus.configuration)
        }
        let sidecar: Sidecar
        do {
            sidecar = try Sidecar(settings: settings, group: group)
            try await sidecar.start()
        } catch {
            throw failure("\(error)", status: ExitStatus.listener)
        }
        runningSidecar.withLockedValue { $0 = sidecar }
        // Only now, with everything valid and listening, start polling the files.
        certificateSource.watch()
        intentionsSource?.watch()
        return RunningSidecar(sidecar: sidecar, reload: {
            logger.info("SIGHUP: reloading certificate and intentions files")
            certificateSource.reload()
            intentionsSource?.reload()
        }, stopSources: {
            certificateSource.stop()
            intentionsSource?.stop()
        })
    }

    private func startConsulMode(defaultAction: IntentionAction, audit: any AuditSink, metrics: SidecarMetrics,
                                 logger: Logger, group: EventLoopGroup) async throws -> RunningSidecar {
        let fileModeOnly = [("--service-file", serviceFile), ("--cert", cert), ("--key", key), ("--ca", ca),
                            ("--intentions-file", intentionsFile), ("--trust-domain", trustDomain)]
            .compactMap { $0.1 == nil ? nil : $0.0 } + (upstreamEndpoints.isEmpty ? [] : ["--upstream-endpoint"])
        guard fileModeOnly.isEmpty else {
            throw failure("\(fileModeOnly.joined(separator: ", ")) cannot be combined with Consul mode: the agent provides them",
                          status: ExitStatus.configuration)
        }
        guard (sidecarFor == nil) != (proxyID == nil) else {
            throw failure("give -sidecar-for or -proxy-id, not both", status: ExitStatus.configuration)
        }
        var options = ConsulProxyOptions(target: sidecarFor.map { .sidecarFor($0) } ?? .proxyID(proxyID ?? ""))
        guard let startupNs = ConfigDuration.parse(startupTimeout) else {
            throw failure("--startup-timeout \"\(startupTimeout)\" is not a duration such as 60s", status: ExitStatus.configuration)
        }
        options.startupTimeout = .nanoseconds(startupNs)
        options.defaultIntention = defaultAction
        options.allowNonLoopbackUpstreams = allowRemoteUpstreams
        options.mux = mux
        let client: ConsulClient
        do {
            options.adjustDefinition = try definitionOverrides()
            let connection = try ConsulConnectionSettings.resolve(httpAddr: httpAddr, token: token, tokenFile: tokenFile,
                                                                  environment: ProcessInfo.processInfo.environment)
            let session = try login.makeSession(staticToken: token != nil || tokenFile != nil, logger: logger, metrics: metrics)
            if session == nil { _ = try connection.readToken() }
            // Last: from here on the client must be shut down on every path (proxy.stop()).
            client = try ConsulClient(settings: connection, eventLoopGroup: group, tokenSource: session)
        } catch {
            throw failure("\(error)", status: ExitStatus.configuration)
        }
        let proxy = ConsulProxy(client: client, options: options, audit: audit, metrics: metrics, logger: logger, group: group)
        let sidecar: Sidecar
        do {
            sidecar = try await proxy.start()
        } catch {
            await proxy.stop()
            throw failure("\(error)", status: error is SidecarError ? ExitStatus.listener : ExitStatus.configuration)
        }
        return RunningSidecar(sidecar: sidecar, reload: {
            logger.info("SIGHUP: nothing to reload in Consul mode (the agent's watches apply changes as they happen)")
        }, stopSources: {
            await proxy.stop()
        })
    }

    /// The operator's flag overrides of proxy config, applied to every registration read.
    private func definitionOverrides() throws -> @Sendable (ProxyDefinition) -> ProxyDefinition {
        if let maxConnections, maxConnections <= 0 {
            throw ValidationError("--max-connections must be greater than 0")
        }
        var idleNs: Int64?
        if let idleTimeout {
            guard let nanoseconds = ConfigDuration.parse(idleTimeout) else {
                throw ValidationError("--idle-timeout \"\(idleTimeout)\" is not a duration such as 30m")
            }
            idleNs = nanoseconds
        }
        let maxConnections = self.maxConnections, idleTimeoutNs = idleNs
        return { definition in
            var definition = definition
            if let maxConnections { definition.config.maxConnections = maxConnections }
            if let idleTimeoutNs { definition.config.idleTimeoutNs = idleTimeoutNs }
            return definition
        }
    }

    /// Loads and validates everything; the intentions file is watched from here on, its
    /// changes going to `onIntentionsChange`.
    private func loadSettings(serviceFile: String, credentials: TLSCredentials, defaultAction: IntentionAction,
                              audit: any AuditSink, metrics: SidecarMetrics, logger: Logger,
                              onIntentionsChange: @escaping @Sendable (IntentionSet) -> Void) throws
        -> (SidecarSettings, IntentionsFileSource?) {
        let definition = try definitionOverrides()(try ProxyDefinition.load(path: serviceFile))
        // In Consul mode an upstream we cannot serve is skipped with a warning (the registration
        // may come from central config); a file the operator wrote is wrong, and says so.
        if !definition.skippedUpstreams.isEmpty {
            throw ConfigError(source: serviceFile, path: "", message: definition.skippedUpstreams.joined(separator: "; "))
        }
        try definition.validateUpstreamBinds(allowNonLoopback: allowRemoteUpstreams)
        let source = intentionsFile.map {
            IntentionsFileSource(path: $0, defaultAction: defaultAction, logger: logger, apply: onIntentionsChange)
        }
        let intentions = try source?.load() ?? IntentionSet([], defaultAction: defaultAction)
        if intentions.intentions.isEmpty && defaultAction == .deny && definition.localServicePort != nil {
            logger.warning("no intentions loaded and default deny: every inbound connection will be refused")
        }
        var endpoints: [String: [Endpoint]] = [:]
        for spec in upstreamEndpoints {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let endpoint = Endpoint(parsing: parts[1]) else {
                throw ValidationError("--upstream-endpoint \"\(spec)\" is not NAME=HOST:PORT")
            }
            guard definition.upstreams.contains(where: { $0.destinationName == parts[0] }) else {
                throw ValidationError("--upstream-endpoint names \"\(parts[0])\", which is not an upstream in \(serviceFile)")
            }
            endpoints[parts[0], default: []].append(endpoint)
        }
        var settings = SidecarSettings(definition: definition, credentials: credentials, intentions: intentions,
                                       upstreamEndpoints: endpoints, datacenter: datacenter,
                                       audit: audit, logger: logger, metrics: metrics)
        settings.allowNonLoopbackUpstreams = allowRemoteUpstreams
        settings.mux = mux
        return (settings, source)
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

/// SIGHUP calls `onReload`; the first SIGTERM/SIGINT ends `firstTermination()` (also when it
/// arrived before anyone waited); later ones call `onLaterTermination`.
/// `@unchecked Sendable`: its mutable state is touched only on its private serial queue.
final class SignalHandling: @unchecked Sendable {
    private let queue = DispatchQueue(label: "backup-sidecar.signals")
    private var sources: [DispatchSourceSignal] = []
    // Touched only on `queue`.
    private var terminated = false
    private var waiter: CheckedContinuation<Void, Never>?
    private var laterHandler: (@Sendable () -> Void)?
    private var reloadHandler: (@Sendable () -> Void)?

    var onLaterTermination: (@Sendable () -> Void)? {
        get { queue.sync { laterHandler } }
        set { queue.sync { laterHandler = newValue } }
    }

    var onReload: (@Sendable () -> Void)? {
        get { queue.sync { reloadHandler } }
        set { queue.sync { reloadHandler = newValue } }
    }

    init() {
        for sig in [SIGHUP, SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [unowned self] in
                if sig == SIGHUP { return reloadHandler?() ?? () }
                if terminated { return laterHandler?() ?? () }
                terminated = true
                waiter?.resume()
                waiter = nil
            }
            source.resume()
            sources.append(source)
        }
    }

    func firstTermination() async {
        await withCheckedContinuation { continuation in
            queue.async {
                if self.terminated { continuation.resume() } else { self.waiter = continuation }
            }
        }
    }
}

/// A closed stdout/stderr pipe (a log shipper that went away) must be an EPIPE the writers
/// shrug off, not a signal that kills the process and every transfer through it. Set first
/// thing: startup logs come before NIO ignores SIGPIPE itself.
enum BrokenPipes {
    static func ignore() { signal(SIGPIPE, SIG_IGN) }
}

/// glibc hands buffers above 128 KiB out as fresh mmaps and returns freed heap to the kernel
/// eagerly; a proxy recycling 64-256 KiB buffers then spends ~10% of its time in page faults.
/// Keeping them on the heap (and capping arenas) trades a little idle RSS for throughput.
enum MemoryTuning {
    static func apply() {
        _ = mallopt(M_MMAP_THRESHOLD, 8 << 20)
        _ = mallopt(M_TRIM_THRESHOLD, 64 << 20)
        _ = mallopt(M_ARENA_MAX, 4)
    }
}

extension MuxMode: ExpressibleByArgument {}
