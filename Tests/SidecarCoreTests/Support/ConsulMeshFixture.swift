import Foundation
import Glibc
import Logging
import NIOCore
@testable import ConsulAgent
import DevAgent
@testable import SidecarCore
import SidecarTLS

/// A port the kernel just handed out and released (for registrations, which need a port
/// number before anything binds it).
func freeLocalPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// The dev agent plus sidecars configured only through it, all in-process on 127.0.0.1.
struct ConsulMesh {
    let agent: DevAgent
    let port: Int

    static func start(leafTTL: TimeInterval = 72 * 3600, aclToken: String? = nil, defaultIntentionPolicy: String = "deny",
                      configDirectory: String? = nil, authMethods: [DevAgentAuthMethod] = []) async throws -> ConsulMesh {
        var configuration = DevAgentConfiguration(logger: quietLogger)
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
    static var testTiming: WatchTiming {
        var timing = WatchTiming()
        timing.wait = .seconds(3)
        timing.retryBase = 0.1
        timing.retryCap = 0.5
        return timing
    }

    /// A sidecar started the way `backup-sidecar run -sidecar-for SERVICE_ID` starts one.
    func sidecar(for serviceID: String, audit: MemoryAuditSink = MemoryAuditSink(), token: String? = nil,
                 tokenSource: (any ConsulTokenSource)? = nil, startupTimeout: TimeAmount = .seconds(10),
                 logger: Logger = quietLogger) async throws -> (ConsulProxy, Sidecar) {
        let client = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: port), token: token),
                                      eventLoopGroup: testGroup, tokenSource: tokenSource)
        var options = ConsulProxyOptions(target: .sidecarFor(serviceID))
        options.timing = Self.testTiming
        options.startupTimeout = startupTimeout
        let proxy = ConsulProxy(client: client, options: options, audit: audit, metrics: SidecarMetrics(), logger: logger,
                                group: testGroup)
        do {
            return (proxy, try await proxy.start())
        } catch {
            await proxy.stop()
            throw error
        }
    }

    /// A service with `connect.sidecar_service` (the sidecar's own port given, so tests know it).
    func registerService(id: String, name: String, port: Int, sidecarPort: Int, upstreams: [(String, Int)] = [],
                         check: String? = nil) throws {
        let upstreamJSON = upstreams.map { #"{"destination_name": "\#($0.0)", "local_bind_port": \#($0.1), "config": {"connect_timeout_ms": 2000}}"# }
            .joined(separator: ",")
        let checkJSON = check.map { #", "check": {"check_id": "\#($0)", "ttl": "1h", "status": "passing"}"# } ?? ""
        try agent.registerService(json: """
            {"id": "\(id)", "name": "\(name)", "port": \(port), "address": "127.0.0.1",
             "connect": {"sidecar_service": {"port": \(sidecarPort)\(checkJSON),
                                             "proxy": {"upstreams": [\(upstreamJSON)]}}}}
            """)
    }

    func allow(_ source: String, to destination: String) throws {
        try agent.writeConfigEntry(json: """
            {"Kind": "service-intentions", "Name": "\(destination)", "Sources": [{"Name": "\(source)", "Action": "allow"}]}
            """)
    }

    func deny(_ source: String, to destination: String) throws {
        try agent.writeConfigEntry(json: """
            {"Kind": "service-intentions", "Name": "\(destination)", "Sources": [{"Name": "\(source)", "Action": "deny"}]}
            """)
    }

    func stop() async { await agent.stop() }
}

/// One echo round trip of `bytes` random bytes through `port`; true when every byte came back.
func echoRoundTrip(port: Int, bytes: Int = 64 << 10) async -> Bool {
    guard let socket = try? BlockingSocket(port: port) else { return false }
    socket.setReceiveTimeout(seconds: 10)
    async let received = onThread { socket.receiveAll() }
    let sent = await onThread { () -> (sent: Int, sha256: String) in
        let result = RandomStream.send(socket, bytes: bytes)
        socket.shutdownWrite()
        return result
    }
    let echo = await received
    return echo.cleanEOF && echo.count == bytes && echo.sha256 == sent.sha256
}

extension BlockingSocket {
    /// Reads exactly `count` bytes (nil on EOF, error or timeout first).
    func receiveExactly(_ count: Int) -> [UInt8]? {
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
    func echoes(_ text: String) -> Bool {
        send(Array(text.utf8)) && receiveExactly(text.utf8.count) == Array(text.utf8)
    }
}
