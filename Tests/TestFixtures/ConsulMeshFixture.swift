import Foundation
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
@testable import ConsulAgent
@testable import DevAgent
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport

/// A TCP socket bound (not listening) to a port the kernel picked on 127.0.0.1: connections to
/// it are refused, and no one else can take the port while the caller keeps `fd` open.
package func reservedLoopbackPort() -> (fd: Int32, port: Int) {
    let (fd, bound) = boundLoopbackSocket(port: 0)
    precondition(bound, "binding 127.0.0.1:0 failed")
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A free port for registrations, which need a number before anything binds it. Chosen
/// below the kernel's ephemeral range (32768-60999): a port handed out from that range and
/// released could be taken by any outgoing connection of a parallel test before our bind.
/// Never the same port twice in one run: a test that closes a port and checks it refuses
/// connections must not see another test's listener arrive there.
package func freeLocalPort() -> Int {
    while true {
        let port = Int.random(in: 10_000..<32_000)
        guard handedOutPorts.withLockedValue({ $0.insert(port).inserted }) else { continue }
        let (fd, bound) = boundLoopbackSocket(port: port)
        close(fd)
        if bound { return port }
    }
}

private let handedOutPorts = NIOLockedValueBox<Set<Int>>([])

/// A TCP socket bound (not listening) to 127.0.0.1:`port`, and whether the bind worked.
private func boundLoopbackSocket(port: Int) -> (fd: Int32, bound: Bool) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return (fd, result == 0)
}

/// The dev agent plus sidecars configured only through it, all in-process on 127.0.0.1.
package struct ConsulMesh {
    package let agent: DevAgent
    package let port: Int

    package static func start(leafTTL: TimeInterval = 72 * 3600, aclToken: String? = nil, defaultIntentionPolicy: String = "deny",
                      configDirectory: String? = nil, authMethods: [DevAgentAuthMethod] = [],
                      enterprise: Bool = false) async throws -> ConsulMesh {
        var configuration = DevAgentConfiguration(logger: quietLogger)
        configuration.enterprise = enterprise
        configuration.defaultIntentionPolicy = defaultIntentionPolicy
        configuration.configDirectory = configDirectory
        configuration.httpPort = 0
        configuration.leafTTL = leafTTL
        configuration.rootRenewJitter = 0...0.2
        configuration.aclToken = aclToken
        configuration.authMethods = authMethods
        let agent = try DevAgent(configuration: configuration)
        let port = try await agent.start()
        return ConsulMesh(agent: agent, port: port)
    }

    /// Fast watches so tests see changes and recoveries within a second or two.
    package static var testTiming: WatchTiming {
        var timing = WatchTiming()
        timing.wait = .seconds(3)
        timing.retryBase = 0.1
        timing.retryCap = 0.5
        timing.minInterval = .milliseconds(20)
        return timing
    }

    /// A sidecar started the way `backup-sidecar run -sidecar-for SERVICE_ID` starts one.
    package func sidecar(for serviceID: String, audit: MemoryAuditSink = MemoryAuditSink(), token: String? = nil,
                 tokenSource: (any ConsulTokenSource)? = nil, startupTimeout: TimeAmount = .seconds(60),
                 namespace: String? = nil, logger: Logger = quietLogger,
                 group: EventLoopGroup = testGroup) async throws -> (ConsulProxy, Sidecar) {
        var settings = ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: port), token: token)
        settings.namespace = namespace
        let client = try ConsulClient(settings: settings, eventLoopGroup: group, tokenSource: tokenSource)
        var options = ConsulProxyOptions(target: .sidecarFor(serviceID))
        options.timing = Self.testTiming
        options.startupTimeout = startupTimeout
        let proxy = ConsulProxy(client: client, options: options, audit: audit, metrics: SidecarMetrics(), logger: logger,
                                group: group)
        do {
            return (proxy, try await proxy.start())
        } catch {
            await proxy.stop()
            throw error
        }
    }

    /// A service with `connect.sidecar_service` (the sidecar's own port given, so tests know it).
    package func registerService(id: String, name: String, port: Int, sidecarPort: Int, upstreams: [(String, Int)] = [],
                         check: String? = nil) throws {
        let upstreamJSON = upstreams.map { #"{"destination_name": "\#($0.0)", "local_bind_port": \#($0.1), "config": {"connect_timeout_ms": 10000}}"# }
            .joined(separator: ",")
        let checkJSON = check.map { #", "check": {"check_id": "\#($0)", "ttl": "1h", "status": "passing"}"# } ?? ""
        try agent.registerService(json: """
            {"id": "\(id)", "name": "\(name)", "port": \(port), "address": "127.0.0.1",
             "connect": {"sidecar_service": {"port": \(sidecarPort)\(checkJSON),
                                             "proxy": {"upstreams": [\(upstreamJSON)]}}}}
            """)
    }

    package func allow(_ source: String, to destination: String) throws {
        try agent.writeConfigEntry(json: """
            {"Kind": "service-intentions", "Name": "\(destination)", "Sources": [{"Name": "\(source)", "Action": "allow"}]}
            """)
    }

    package func deny(_ source: String, to destination: String) throws {
        try agent.writeConfigEntry(json: """
            {"Kind": "service-intentions", "Name": "\(destination)", "Sources": [{"Name": "\(source)", "Action": "deny"}]}
            """)
    }

    package func stop() async { await agent.stop() }
}

/// One echoed stream: what was sent and what came back.
package struct EchoResult: Sendable {
    package var sent: Int
    package var sentDigest: String
    package var received: Int
    package var receivedDigest: String
    package var clean: Bool
    /// Every byte came back, in order, and the stream ended cleanly.
    package var ok: Bool { clean && sent == received && sentDigest == receivedDigest }
}

/// Sends `bytes` random bytes through `port`, half-closes, and reads the echo to the end.
/// `receiveTimeout` bounds only a failure: 30 s, since a round trip through two sidecars on a
/// machine whose cores are busy (the suite runs tests in parallel) has taken over 10 s.
package func echoStream(port: Int, bytes: Int, receiveTimeout: Int = 30) async -> EchoResult {
    guard let socket = try? BlockingSocket(port: port) else {
        return EchoResult(sent: 0, sentDigest: "", received: 0, receivedDigest: "", clean: false)
    }
    socket.setReceiveTimeout(seconds: receiveTimeout)
    async let received = onThread { socket.receiveAll() }
    let sent = await onThread { () -> (sent: Int, sha256: String) in
        let result = RandomStream.send(socket, bytes: bytes)
        socket.shutdownWrite()
        return result
    }
    let echo = await received
    return EchoResult(sent: sent.sent, sentDigest: sent.sha256, received: echo.count, receivedDigest: echo.sha256, clean: echo.cleanEOF)
}

/// One echo round trip of `bytes` random bytes through `port`; true when every byte came back.
package func echoRoundTrip(port: Int, bytes: Int = 64 << 10) async -> Bool {
    await echoStream(port: port, bytes: bytes).ok
}

extension BlockingSocket {
    /// Reads exactly `count` bytes (nil on EOF, error or timeout first).
    package func receiveExactly(_ count: Int) -> [UInt8]? {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while result.count < count {
            let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count - result.count, 0) }
            guard received > 0 else { return nil }
            result += buffer[0..<received]
        }
        return result
    }

    /// Sends `text` and expects it echoed back.
    package func echoes(_ text: String) -> Bool {
        send(Array(text.utf8)) && receiveExactly(text.utf8.count) == Array(text.utf8)
    }
}

/// The usual Consul-mode setup: a storage service with its sidecar and a backup-agent sidecar
/// with a `storage` upstream, all registered with the agent and started with `-sidecar-for`.
package struct ConsulPair {
    package let mesh: ConsulMesh
    package let backend: TestBackend
    package let upstreamPort: Int
    package let storage: Sidecar
    package let storageProxy: ConsulProxy
    package let agent: Sidecar
    package let agentProxy: ConsulProxy
    package let agentAudit: MemoryAuditSink
    package let storageAudit: MemoryAuditSink
    /// Set when the pair runs on event loops of its own, shut down by `stop()`.
    private let ownGroup: MultiThreadedEventLoopGroup?

    /// - Parameter allow: write an intention letting backup-agent reach storage.
    /// - Parameter ownEventLoops: two threads of the pair's own, for a test whose renewals must
    ///   not wait behind a parallel suite's work on the shared `testGroup`.
    package static func start(_ mesh: ConsulMesh, backend behaviour: TestBackend.Behaviour = .echo, allow: Bool = true,
                      storageLogger: Logger = quietLogger, ownEventLoops: Bool = false) async throws -> ConsulPair {
        let ownGroup = ownEventLoops ? MultiThreadedEventLoopGroup(numberOfThreads: 2) : nil
        let group: EventLoopGroup = ownGroup ?? testGroup
        // The pair owns the mesh, as `stop()` does: a failed start stops what it started, in
        // reverse, and the mesh, so a test that fails here leaks no threads or ports.
        var undo: [() async -> Void] = [{ await mesh.stop() }]
        do {
            let backend = try await TestBackend(behaviour, group: group)
            undo.append { await backend.stop() }
            let upstreamPort = freeLocalPort()
            try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: freeLocalPort())
            try mesh.registerService(id: "backup-agent", name: "backup-agent", port: freeLocalPort(), sidecarPort: freeLocalPort(),
                                     upstreams: [("storage", upstreamPort)])
            if allow { try mesh.allow("backup-agent", to: "storage") }
            let agentAudit = MemoryAuditSink(), storageAudit = MemoryAuditSink()
            let (storageProxy, storage) = try await mesh.sidecar(for: "storage", audit: storageAudit, logger: storageLogger, group: group)
            undo.append { await storage.stop() }
            undo.append { await storageProxy.stop() }
            let (agentProxy, agent) = try await mesh.sidecar(for: "backup-agent", audit: agentAudit, group: group)
            return ConsulPair(mesh: mesh, backend: backend, upstreamPort: upstreamPort, storage: storage, storageProxy: storageProxy,
                              agent: agent, agentProxy: agentProxy, agentAudit: agentAudit, storageAudit: storageAudit,
                              ownGroup: ownGroup)
        } catch {
            for step in undo.reversed() { await step() }
            try? await ownGroup?.shutdownGracefully()
            throw error
        }
    }

    /// Both sidecars ready for traffic (intentions and the storage instance arrived).
    package func ready() async -> Bool {
        await eventually { storage.readiness.ready && agent.upstreamInstanceList["storage"]?.count == 1 }
    }

    /// Storage leaf serials as the backup-agent sidecar saw them, one per new connection.
    package var serialsSeen: [String] {
        agentAudit.events.filter { $0.kind == .upstreamConnected }.compactMap { event -> String? in
            guard let reason = event.reason, let range = reason.range(of: "serial ") else { return nil }
            return reason[range.upperBound...].split(separator: " ").first.map(String.init)
        }
    }

    /// Both sides' audit lines other than the routine ones of a tunnel that worked, one per
    /// line, to show why something failed.
    package var unusualEvents: String {
        let routine: Set<AuditEvent.Kind> = [.upstreamConnected, .authorization, .connectionClosed, .muxConnected]
        return [("agent", agentAudit), ("storage", storageAudit)].flatMap { side, audit in
            audit.events.filter { !routine.contains($0.kind) }.map {
                "\(side) \($0.time.timeIntervalSince1970) \($0.kind) \($0.connectionID ?? "-") \($0.reason ?? "")"
            }
        }.joined(separator: "\n")
    }

    /// Refusals for a leaf that expired before its renewal arrived, on either side: a sidecar
    /// that will not present its own expired leaf (the agent's upstream, the storage's public
    /// listener), and a sidecar refusing the peer's leaf that expired between the peer's own
    /// check at accept and the end of a handshake slowed by a busy machine.
    package var expiredLeafRefusals: Int {
        agentAudit.events.filter {
            $0.kind == .upstreamFailed && (($0.reason?.contains(") expired at ") == true
                                            && $0.reason?.contains("and was not renewed") == true)
                                           || $0.reason?.contains("peer rejected: certificate chain rejected: certificate has expired at depth 0") == true)
        }.count
            + storageAudit.events.filter {
                $0.kind == .handshakeRejected && ($0.reason?.contains("refusing to present it") == true
                                                  || $0.reason?.contains("certificate has expired at depth 0") == true)
            }.count
    }

    /// Matches a failed connection with an expired-leaf refusal audited since the last match:
    /// true when there is one (the failure is explained), false for any other failure.
    package final class ExpiredLeafLedger {
        private let pair: ConsulPair
        private var matched = 0

        package init(_ pair: ConsulPair) { self.pair = pair }

        package func explainsFailure() -> Bool {
            let refusals = pair.expiredLeafRefusals
            guard refusals > matched else { return false }
            matched = refusals
            return true
        }
    }

    /// `serialsSeen` with repeats collapsed: the order in which renewals showed up.
    package var serialChanges: [String] {
        serialsSeen.reduce(into: []) { changes, serial in if changes.last != serial { changes.append(serial) } }
    }

    package func stop() async {
        await storageProxy.stop()
        await agentProxy.stop()
        await agent.stop()
        await storage.stop()
        await backend.stop()
        await mesh.stop()
        try? await ownGroup?.shutdownGracefully()
    }
}

/// Two storage instances (service IDs storage-1 and storage-2, TTL checks `storage-N-alive`,
/// each with its own backend and sidecar) and a backup-agent sidecar with a `storage` upstream.
package struct ConsulTwoInstances {
    package let mesh: ConsulMesh
    package let backends: [TestBackend]
    package let storages: [Sidecar]
    package let agent: Sidecar
    package let upstreamPort: Int
    private let proxies: [ConsulProxy]

    package static func start(_ mesh: ConsulMesh) async throws -> ConsulTwoInstances {
        var backends: [TestBackend] = [], storages: [Sidecar] = [], proxies: [ConsulProxy] = []
        for index in 1...2 {
            let backend = try await TestBackend(.echo, group: testGroup)
            try mesh.registerService(id: "storage-\(index)", name: "storage", port: backend.port, sidecarPort: freeLocalPort(),
                                     check: "storage-\(index)-alive")
            backends.append(backend)
        }
        let upstreamPort = freeLocalPort()
        try mesh.registerService(id: "backup-agent", name: "backup-agent", port: freeLocalPort(), sidecarPort: freeLocalPort(),
                                 upstreams: [("storage", upstreamPort)])
        try mesh.allow("backup-agent", to: "storage")
        for index in 1...2 {
            let (proxy, storage) = try await mesh.sidecar(for: "storage-\(index)")
            proxies.append(proxy)
            storages.append(storage)
        }
        let (agentProxy, agent) = try await mesh.sidecar(for: "backup-agent")
        return ConsulTwoInstances(mesh: mesh, backends: backends, storages: storages, agent: agent, upstreamPort: upstreamPort,
                                  proxies: proxies + [agentProxy])
    }

    package func ready() async -> Bool {
        await eventually { storages.allSatisfy(\.readiness.ready) && agent.upstreamInstanceList["storage"]?.count == 2 }
    }

    package func stop() async {
        for proxy in proxies { await proxy.stop() }
        await agent.stop()
        for storage in storages { await storage.stop() }
        for backend in backends { await backend.stop() }
        await mesh.stop()
    }
}
