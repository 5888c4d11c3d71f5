import Foundation
import Glibc
import Testing
@testable import SidecarCore
import SidecarTLS

/// Only the backup job may use the backup identity: unix-socket upstreams, caller
/// credentials, allow-lists, and the caller in the audit log.
@Suite("Local caller authentication", .serialized)
struct LocalCallerTests {
    static func directory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("callers-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        return path
    }

    static let ownExecutable = LocalCaller.executable(of: getpid())

    /// Runs a tiny python client as `nobody` (setpriv), returns what it received.
    static func asNobody(_ script: String, _ argument: String) async throws -> ProcessRunner.Result {
        try await ProcessRunner.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                     "/usr/bin/python3", "-c", script, argument], timeout: 15)
    }

    static let unixClient = """
        import socket, sys
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(5)
        try:
            s.sendall(b"delete all snapshots\\n")
            print("received", len(s.recv(100)))
        except Exception as e: print("error", type(e).__name__)
        """

    static func unixSocket(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            _ = path.utf8CString.withUnsafeBytes { raw.copyMemory(from: $0) }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { close(fd); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return fd
    }

    @Test("A unix-socket upstream with mode 0660 carries 64 MiB both ways, replaces a stale socket, and is removed on stop")
    func unixSocketRoundTrip() async throws {
        let directory = try Self.directory()
        let path = "\(directory)/storage.sock"
        // A stale socket file from a crashed run: bound, then its listener gone.
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in _ = path.utf8CString.withUnsafeBytes { raw.copyMemory(from: $0) } }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(stale)
        #expect(FileManager.default.fileExists(atPath: path))

        let mesh = try await MeshFixture.start(backend: .echo)
        defer { Task { await mesh.stop() } }
        let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: mesh.publicPort) {
            $0.localBindSocketPath = path
            $0.localBindSocketMode = 0o660
        }
        var info = stat()
        #expect(lstat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["storage.sock"],
                "the private directory used to set the mode before exposure is gone")

        let fd = try Self.unixSocket(path)
        let client = try BlockingSocket(adopting: fd)
        async let received = onThread { client.receiveAll() }
        let sent = await onThread { () -> (sent: Int, sha256: String) in
            let result = RandomStream.send(client, bytes: 64 << 20)
            client.shutdownWrite()
            return result
        }
        let echo = await received
        #expect(echo.count == 64 << 20)
        #expect(echo.sha256 == sent.sha256)

        let connected = try #require(agentAudit.events.first { $0.kind == .upstreamConnected })
        #expect(connected.caller?.uid == getuid())
        #expect(connected.caller?.pid == getpid())
        #expect(connected.caller?.executable == Self.ownExecutable)
        #expect(connected.jsonLine.contains("\"caller_uid\":\(getuid())"))
        #expect(connected.jsonLine.contains("\"caller_exe\":"))

        await agent.stop()
        #expect(await eventually { !FileManager.default.fileExists(atPath: path) }, "socket file removed on shutdown")
    }

    @Test("A caller whose uid is not allowed is refused before any mesh connection; the allowed uid passes")
    func unixAllowList() async throws {
        let path = "\(try Self.directory())/storage.sock"
        let mesh = try await MeshFixture.start(backend: .echo)
        defer { Task { await mesh.stop() } }
        let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: mesh.publicPort) {
            $0.localBindSocketPath = path
            $0.localBindSocketMode = 0o666 // reachable by everyone on the file system: only the allow-list stands between
            $0.allowedUsers = ["root"]
        }
        defer { Task { await agent.stop() } }

        let refused = try await Self.asNobody(Self.unixClient, path)
        #expect(refused.output.contains("received 0") || refused.output.contains("error"), "nobody got data: \(refused.output)")
        let denial = try #require(agentAudit.events.first { $0.kind == .callerRefused })
        #expect(denial.caller?.uid == 65534)
        #expect(denial.caller?.executable?.contains("python3") == true)
        #expect(denial.reason?.contains("not allowed") == true)
        #expect(!agentAudit.events.contains { $0.kind == .upstreamConnected })
        #expect(mesh.storageAudit.events.isEmpty, "nothing reached the remote sidecar")
        #expect(mesh.backend.connections == 0)

        let fd = try Self.unixSocket(path)
        let allowed = try BlockingSocket(adopting: fd)
        allowed.setReceiveTimeout(seconds: 5)
        #expect(await onThread { ReauthorizationTests.ping(allowed, "root may back up\n") })
        #expect(agentAudit.events.contains { $0.kind == .upstreamConnected && $0.caller?.uid == 0 })
    }

    @Test("TCP loopback upstream with an allow-list: the caller is found through /proc (best effort)")
    func tcpAllowList() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        defer { Task { await mesh.stop() } }
        let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: mesh.publicPort) {
            $0.allowedUsers = ["0"]
        }
        defer { Task { await agent.stop() } }
        let port = agent.boundAddress(of: "upstream:storage")!.port!

        let allowed = try BlockingSocket(port: port)
        allowed.setReceiveTimeout(seconds: 5)
        #expect(await onThread { ReauthorizationTests.ping(allowed, "root over tcp\n") }, "\(agentAudit.events.map(\.jsonLine))")
        let connected = try #require(agentAudit.events.first { $0.kind == .upstreamConnected })
        #expect(connected.caller?.uid == 0)
        #expect(connected.caller?.pid == getpid())

        let refused = try await Self.asNobody("""
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.settimeout(5)
            try:
                s.sendall(b"hello\\n")
                print("received", len(s.recv(100)))
            except Exception as e: print("error", type(e).__name__)
            """, String(port))
        #expect(refused.output.contains("received 0") || refused.output.contains("error"), "\(refused.output)")
        let denial = try #require(agentAudit.events.first { $0.kind == .callerRefused })
        #expect(denial.caller?.uid == 65534)
        #expect(mesh.backend.connections == 1, "only the allowed caller reached the storage side")
    }

    @Test("The inbound side reaches a local app listening on a unix socket (LocalServiceSocketPath)")
    func localServiceSocket() async throws {
        let path = "\(try Self.directory())/app.sock"
        let app = try await TestBackend(.echo, group: testGroup, unixSocketPath: path)
        defer { Task { await app.stop() } }
        var config = ProxyConfig()
        config.handshakeTimeoutMs = 10000
        var definition = ProxyDefinition(
            id: "storage-sidecar-proxy", name: "storage-sidecar-proxy", address: "127.0.0.1", port: 0,
            destinationServiceName: "storage", destinationServiceID: nil, localServiceAddress: "127.0.0.1",
            localServicePort: nil, config: config, upstreams: [])
        definition.localServiceSocketPath = path
        let storage = try Sidecar(settings: SidecarSettings(
            definition: definition, credentials: try TestCertificates.credentials("storage"),
            intentions: IntentionSet(MeshFixture.allowBackupAgent, defaultAction: .deny), audit: MemoryAuditSink(),
            logger: quietLogger), group: testGroup)
        try await storage.start()
        defer { Task { await storage.stop() } }
        let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                          storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
        defer { Task { await agent.stop() } }
        let socket = try BlockingSocket(port: agent.boundAddress(of: "upstream:storage")!.port!)
        socket.setReceiveTimeout(seconds: 5)
        #expect(await onThread { ReauthorizationTests.ping(socket, "to a unix-socket app\n") })
        #expect(app.connections == 1)
    }

    @Test("Unknown user names in an allow-list are a startup error")
    func unknownUser() async throws {
        await #expect(throws: SidecarError.self) {
            _ = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: 1) {
                $0.allowedUsers = ["no-such-user-backup-sidecar"]
            }
        }
    }
}
