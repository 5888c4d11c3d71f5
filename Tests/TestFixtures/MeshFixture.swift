import Logging
import NIOCore
import NIOPosix
@testable import SidecarCore
@testable import SidecarTLS
@testable import SidecarModel

/// Shared event loops for the integration tests (2 threads, like production on this machine).
package let testGroup = MultiThreadedEventLoopGroup(numberOfThreads: 2)

/// A storage sidecar (public listener -> backend) and a backup-agent sidecar (upstream listener
/// -> storage sidecar), both in-process on 127.0.0.1 with ports picked by the kernel.
package struct MeshFixture {
    package let backend: TestBackend
    package let storage: Sidecar
    package let agent: Sidecar
    package let storageAudit: MemoryAuditSink
    package let agentAudit: MemoryAuditSink
    /// The event loops all three run on: the suite's `testGroup`, or their own one.
    package let group: EventLoopGroup
    private let ownsGroup: Bool

    package var publicPort: Int { storage.boundAddress(of: Sidecar.publicListenerName)!.port! }
    package var upstreamPort: Int { agent.boundAddress(of: "upstream:storage")!.port! }

    package static let allowBackupAgent = [Intention(destinationName: "storage", sourceName: "backup-agent", action: .allow)]

    /// `ownEventLoop`: a one-thread group of the mesh's own, shut down by `stop()`, for a test
    /// whose time limit a parallel suite's work on the shared `testGroup` could otherwise eat.
    package static func start(backend behaviour: TestBackend.Behaviour = .echo,
                      storageCertificate: String = "storage", storageKey: String? = nil, storageRoots: String = "ca.pem",
                      agentCertificate: String = "backup-agent", agentRoots: String = "ca.pem",
                      intentions: [Intention] = allowBackupAgent, defaultAction: IntentionAction = .deny,
                      handshakeTimeoutMs: Int = 10000, maxConnectionLifetimeNs: Int64? = nil,
                      protocol proto: String = "tcp", mux: MuxMode = .prefer, ownEventLoop: Bool = false,
                      storageConfig: (inout ProxyConfig) -> Void = { _ in }) async throws -> MeshFixture {
        let group: EventLoopGroup = ownEventLoop ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : testGroup
        let backend = try await TestBackend(behaviour, group: group)
        let storage = try await startStorage(backendPort: backend.port,
                                             credentials: try TestCertificates.credentials(storageCertificate, key: storageKey, roots: storageRoots),
                                             intentions: intentions, defaultAction: defaultAction,
                                             handshakeTimeoutMs: handshakeTimeoutMs, maxConnectionLifetimeNs: maxConnectionLifetimeNs,
                                             protocol: proto, mux: mux, group: group, configure: storageConfig)
        let (agent, agentAudit) = try await startAgent(certificate: agentCertificate, roots: agentRoots,
                                                       storagePort: storage.0.boundAddress(of: Sidecar.publicListenerName)!.port!,
                                                       mux: mux, group: group)
        return MeshFixture(backend: backend, storage: storage.0, agent: agent, storageAudit: storage.1, agentAudit: agentAudit,
                           group: group, ownsGroup: ownEventLoop)
    }

    /// A backup-agent-style sidecar with one upstream, `storage`, on an ephemeral local port.
    package static func startAgent(certificate: String, roots: String = "ca.pem", storagePort: Int, mux: MuxMode = .prefer,
                           group: EventLoopGroup = testGroup,
                           configureUpstream: (inout Upstream) -> Void = { _ in }) async throws -> (Sidecar, MemoryAuditSink) {
        let agentAudit = MemoryAuditSink()
        let agentDefinition = ProxyDefinition(
            id: "backup-agent-sidecar-proxy", name: "backup-agent-sidecar-proxy", address: "127.0.0.1", port: nil,
            destinationServiceName: "backup-agent", destinationServiceID: nil, localServiceAddress: "127.0.0.1",
            localServicePort: nil, config: ProxyConfig(),
            upstreams: [{
                var upstream = Upstream(destinationName: "storage", tenancy: .default,
                                        datacenter: nil, localBindAddress: "127.0.0.1", localBindPort: 0, connectTimeoutMs: 10_000)
                configureUpstream(&upstream)
                return upstream
            }()])
        var settings = SidecarSettings(
            definition: agentDefinition, credentials: try TestCertificates.credentials(certificate, roots: roots),
            intentions: IntentionSet([], defaultAction: .deny),
            upstreamEndpoints: ["storage": [Endpoint(host: "127.0.0.1", port: storagePort)]],
            audit: agentAudit, logger: quietLogger, metrics: SidecarMetrics())
        settings.mux = mux
        let agent = try Sidecar(settings: settings, group: group)
        try await agent.start()
        return (agent, agentAudit)
    }

    package static func startStorage(backendPort: Int, credentials: TLSCredentials, intentions: [Intention],
                             defaultAction: IntentionAction = .deny, handshakeTimeoutMs: Int = 10000,
                             maxConnectionLifetimeNs: Int64? = nil, protocol proto: String = "tcp", mux: MuxMode = .prefer,
                             group: EventLoopGroup = testGroup,
                             configure: (inout ProxyConfig) -> Void = { _ in }) async throws -> (Sidecar, MemoryAuditSink) {
        let audit = MemoryAuditSink()
        var config = ProxyConfig()
        config.handshakeTimeoutMs = handshakeTimeoutMs
        config.maxConnectionLifetimeNs = maxConnectionLifetimeNs
        config.protocol = proto
        configure(&config)
        let definition = ProxyDefinition(
            id: "storage-sidecar-proxy", name: "storage-sidecar-proxy", address: "127.0.0.1", port: 0,
            destinationServiceName: "storage", destinationServiceID: nil, localServiceAddress: "127.0.0.1",
            localServicePort: backendPort, config: config, upstreams: [])
        let metrics = SidecarMetrics()
        var settings = SidecarSettings(
            definition: definition, credentials: credentials,
            intentions: IntentionSet(intentions, defaultAction: defaultAction), audit: audit,
            logger: quietLogger, metrics: metrics)
        settings.mux = mux
        let sidecar = try Sidecar(settings: settings, group: group)
        try await sidecar.start()
        return (sidecar, audit)
    }

    package func stop() async {
        await agent.stop()
        await storage.stop()
        await backend.stop()
        if ownsGroup { try? await group.shutdownGracefully() }
    }
}

package let quietLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return logger
}()

