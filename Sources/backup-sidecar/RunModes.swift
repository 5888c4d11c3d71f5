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

/// How `run` starts its sidecar: from files (file mode) or from the Consul agent.
extension Run {
    /// A started sidecar and whatever feeds it (files or the Consul agent).
    struct RunningSidecar {
        var sidecar: Sidecar
        var reload: @Sendable () -> Void
        var stopSources: @Sendable () async -> Void
    }

    func startFileMode(defaultAction: IntentionAction, audit: any AuditSink, metrics: SidecarMetrics,
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

    func startConsulMode(defaultAction: IntentionAction, audit: any AuditSink, metrics: SidecarMetrics,
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
    func definitionOverrides() throws -> @Sendable (ProxyDefinition) -> ProxyDefinition {
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
    func loadSettings(serviceFile: String, credentials: TLSCredentials, defaultAction: IntentionAction,
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
