import ArgumentParser
import DevAgent
import FoundationEssentials
import Logging
import SidecarCore
import SidecarModel

/// `backup-sidecar dev-agent`: like `consul agent -dev`, for development, the demo and tests.
/// State lives in memory only; production sidecars talk to a real Consul agent.
struct DevAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev-agent",
        abstract: "Development only: an in-memory Consul agent (HTTP API, Connect CA, intentions) for sidecars to run against."
    )

    @Option(name: [.customLong("http-addr"), .customLong("http-addr", withSingleDash: true)],
            help: "Where the HTTP API listens (HOST:PORT; port 0 picks one).")
    var httpAddr: String = "127.0.0.1:8500"

    @Option(name: [.customLong("config-dir"), .customLong("config-dir", withSingleDash: true)],
            help: "Load every *.json service definition and config entry in this directory at start (Consul's file formats).")
    var configDir: String?

    @Option(name: [.customLong("leaf-ttl"), .customLong("leaf-ttl", withSingleDash: true)],
            help: "Lifetime of minted leaf certificates (Go duration; renewed at 60-90% of it).")
    var leafTTL: String = "72h"

    @Option(name: [.customLong("datacenter"), .customLong("datacenter", withSingleDash: true)])
    var datacenter: String = "dc1"

    @Option(name: [.customLong("default-intention-policy"), .customLong("default-intention-policy", withSingleDash: true)],
            help: "allow or deny when no intention matches (reported as DebugConfig.DefaultIntentionPolicy).")
    var defaultIntentionPolicy: String = "deny"

    @Option(name: .customLong("acl-token-file"),
            help: "Enforce ACLs per endpoint as Consul does: the token in this file may do anything; a token from /v1/acl/login is a service identity; no token is the anonymous token.")
    var aclTokenFile: String?

    @Option(name: .customLong("auth-method-file"),
            help: "A jwt auth method for /v1/acl/login: {\"AuthMethod\": {\"Name\", \"Type\": \"jwt\", \"MaxTokenTTL\", \"Config\": {\"JWTValidationPubKeys\", \"BoundAudiences\", \"BoundIssuer\", \"ClaimMappings\"}}} (repeatable).")
    var authMethodFiles: [String] = []

    @Flag(name: .customLong("enterprise"),
          help: "Act as Consul Enterprise: namespaces and admin partitions (?ns=, ?partition=). Default: Consul CE, which refuses them.")
    var enterprise = false

    @Option(name: .customLong("log-level"))
    var logLevel: String = "info"

    @Option(name: .customLong("log-format"))
    var logFormat: String = "text"

    func run() async throws {
        BrokenPipes.ignore()
        let signals = SignalHandling()
        try bootstrapLogging(level: logLevel, format: logFormat)
        guard let endpoint = Endpoint(parsing: httpAddr, allowingPortZero: true) else {
            throw failure("-http-addr must be HOST:PORT, not \"\(httpAddr)\"", status: ExitStatus.configuration)
        }
        guard let ttlNs = ConfigDuration.parse(leafTTL), ttlNs >= 1_000_000_000 else {
            throw failure("-leaf-ttl \"\(leafTTL)\" is not a duration of at least 1s", status: ExitStatus.configuration)
        }
        guard ["allow", "deny"].contains(defaultIntentionPolicy) else {
            throw failure("-default-intention-policy must be allow or deny", status: ExitStatus.configuration)
        }
        let logger = Logger(label: "dev-agent")
        var configuration = DevAgentConfiguration(logger: logger)
        configuration.httpHost = endpoint.host
        configuration.httpPort = endpoint.port
        configuration.leafTTL = TimeInterval(ttlNs) / 1e9
        configuration.datacenter = datacenter
        configuration.defaultIntentionPolicy = defaultIntentionPolicy
        configuration.configDirectory = configDir
        configuration.enterprise = enterprise
        if let aclTokenFile {
            guard let token = try? String(contentsOfFile: aclTokenFile, encoding: .utf8)
                .trimmingWhitespace(), !token.isEmpty else {
                throw failure("cannot read a token from \(aclTokenFile)", status: ExitStatus.configuration)
            }
            configuration.aclToken = token
        }
        for file in authMethodFiles {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw failure("cannot read --auth-method-file \(file)", status: ExitStatus.configuration)
            }
            do {
                configuration.authMethods += try DevAgentAuthMethod.load(json: data, source: file)
            } catch {
                throw failure("\(error)", status: ExitStatus.configuration)
            }
        }
        let agent: DevAgent
        do {
            agent = try DevAgent(configuration: configuration)
        } catch {
            throw failure("\(error)", status: ExitStatus.configuration)
        }
        do {
            _ = try await agent.start()
        } catch {
            throw failure("\(error)", status: ExitStatus.listener)
        }
        logger.notice("dev agent running (development only: in-memory state, not a Consul server)", metadata: [
            "http_addr": "\(agent.httpAddress)", "trust_domain": "\(agent.trustDomain)", "datacenter": "\(datacenter)",
            "leaf_ttl": "\(leafTTL)", "default_intention_policy": "\(defaultIntentionPolicy)",
        ])
        await signals.firstTermination()
        await agent.stop()
    }
}
