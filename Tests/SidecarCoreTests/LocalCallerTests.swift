import Foundation
import Glibc
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

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

    /// argv[1] "SOURCEPORT:PORT": connects to 127.0.0.1:PORT, from 127.0.0.2:SOURCEPORT unless
    /// SOURCEPORT is 0, and reports what came back.
    static let tcpClient = """
        import socket, sys
        source, port = (int(part) for part in sys.argv[1].split(":"))
        s = socket.socket()
        if source: s.bind(("127.0.0.2", source))
        s.connect(("127.0.0.1", port)); s.settimeout(5)
        try:
            s.sendall(b"hello\\n")
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
        try await withTeardown({ await mesh.stop() }) {
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
            let client = BlockingSocket(adopting: fd)
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
    }

    @Test("A caller whose uid is not allowed is refused before any mesh connection; the allowed uid passes")
    func unixAllowList() async throws {
        let path = "\(try Self.directory())/storage.sock"
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: mesh.publicPort) {
                $0.localBindSocketPath = path
                $0.localBindSocketMode = 0o666 // reachable by everyone on the file system: only the allow-list stands between
                $0.allowedUsers = ["root"]
            }
            try await withTeardown({ await agent.stop() }) {

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
                let allowed = BlockingSocket(adopting: fd)
                allowed.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(allowed, "root may back up\n") })
                #expect(agentAudit.events.contains { $0.kind == .upstreamConnected && $0.caller?.uid == 0 })
            }
        }
    }

    @Test("TCP loopback upstream with an allow-list: the caller is found through /proc (best effort)")
    func tcpAllowList() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: mesh.publicPort) {
                $0.allowedUsers = ["0"]
            }
            try await withTeardown({ await agent.stop() }) {
                let port = agent.boundAddress(of: "upstream:storage")!.port!

                let allowed = try BlockingSocket(port: port)
                allowed.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(allowed, "root over tcp\n") }, "\(agentAudit.events.map(\.jsonLine))")
                let connected = try #require(agentAudit.events.first { $0.kind == .upstreamConnected })
                #expect(connected.caller?.uid == 0)
                #expect(connected.caller?.pid == getpid())

                let refused = try await Self.asNobody(Self.tcpClient, "0:\(port)")
                #expect(refused.output.contains("received 0") || refused.output.contains("error"), "\(refused.output)")
                let denial = try #require(agentAudit.events.first { $0.kind == .callerRefused })
                #expect(denial.caller?.uid == 65534)
                #expect(mesh.backend.connections == 1, "only the allowed caller reached the storage side")
            }
        }
    }

    /// Issue 16, finding 8: the caller's row was matched by ports only, so a process bound to
    /// 127.0.0.2 with the port number of an allowed caller's connection could be taken for it.
    @Test("TCP allow-list: a caller spoofing an allowed caller's port from 127.0.0.2 is identified as itself and refused")
    func tcpPortSpoofing() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: mesh.publicPort) {
                $0.allowedUsers = ["0"]
            }
            try await withTeardown({ await agent.stop() }) {
                let port = agent.boundAddress(of: "upstream:storage")!.port!
                // The victim: root's connection, kept open while the impostor calls.
                let victim = try BlockingSocket(port: port)
                victim.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(victim, "root's backup\n") })
                var address = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                _ = withUnsafeMutablePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(victim.fd, $0, &length) }
                }
                let victimPort = Int(UInt16(bigEndian: address.sin_port))
                let impostor = try await Self.asNobody(Self.tcpClient, "\(victimPort):\(port)")
                #expect(impostor.output.contains("received 0") || impostor.output.contains("error"), "\(impostor.output)")
                let denial = try #require(agentAudit.events.first { $0.kind == .callerRefused }, "\(impostor.output)")
                #expect(denial.caller?.uid == 65534, "identified as \(String(describing: denial.caller))")
                #expect(denial.peerAddress == "127.0.0.2:\(victimPort)")
                #expect(mesh.backend.connections == 1, "only the victim's connection reached the storage side")
            }
        }
    }

    @Test("/proc/net/tcp rows: addresses in the kernel's word order, the whole 4-tuple, state and inode")
    func procNetTCPRows() throws {
        let text = """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0
               1: 0200007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 2222 1 0 20 4 30 10 -1
               2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 20 4 30 10 -1
               3: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0 0 0 0 0 0
            """
        let rows = ProcNetTCP.rows(text)
        #expect(rows.count == 4)
        let loopback = ProcNetTCP.Endpoint(address: [127, 0, 0, 1], port: 8080)
        #expect(rows[0].local == loopback && rows[0].state == 0x0A && rows[0].inode == 1111)
        #expect(rows[1].local == ProcNetTCP.Endpoint(address: [127, 0, 0, 2], port: 50000) && rows[1].remote == loopback)
        #expect(rows[1].uid == 65534 && rows[1].state == ProcNetTCP.established)
        #expect(rows[2].local == ProcNetTCP.Endpoint(address: [127, 0, 0, 1], port: 50000) && rows[2].uid == 0)
        let socketAddress = try SocketAddress(ipAddress: "127.0.0.2", port: 50000)
        #expect(ProcNetTCP.Endpoint(socketAddress) == rows[1].local)
        let v6 = ProcNetTCP.Endpoint(proc: "00000000000000000000000001000000:1F90")
        #expect(v6 == ProcNetTCP.Endpoint(try SocketAddress(ipAddress: "::1", port: 8080)))
        #expect(ProcNetTCP.Endpoint(proc: "0100007F") == nil && ProcNetTCP.Endpoint(proc: "XYZ:1") == nil)
    }

    @Test("The caller's row: a half-closed caller is still found, TIME_WAIT and other 4-tuples are not, v4-mapped looks in tcp")
    func callerRowSelection() throws {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        func row(_ local: String, _ remote: String, state: String, uid: Int, inode: Int) -> String {
            "   0: \(local) \(remote) \(state) 00000000:00000000 00:00000000 00000000 \(uid)        0 \(inode) 1 0 20 4 30 10 -1\n"
        }
        let listener = ProcNetTCP.Endpoint(address: [127, 0, 0, 1], port: 0x1F90)
        let caller = ProcNetTCP.Endpoint(address: [127, 0, 0, 1], port: 0xC350)
        func find(_ tcp: String, _ tcp6: String = header, caller: ProcNetTCP.Endpoint = caller,
                  listener: ProcNetTCP.Endpoint = listener) -> ProcNetTCP.Row? {
            ProcNetTCP.callerRow(caller: caller, listener: listener) { $0 == "/proc/net/tcp" ? header + tcp : $0 == "/proc/net/tcp6" ? tcp6 : nil }
        }
        for (state, found) in [("01", true), ("04", true), ("05", true), ("08", true), ("09", true), ("0B", true),
                               ("02", false), ("03", false), ("06", false), ("07", false), ("0A", false)] {
            let hit = find(row("0100007F:C350", "0100007F:1F90", state: state, uid: 1000, inode: 42))
            #expect((hit?.uid == 1000) == found, "state \(state)")
        }
        #expect(find(row("0100007F:C350", "0100007F:1F90", state: "01", uid: 0, inode: 0)) == nil, "no owner (inode 0)")
        #expect(find(row("0100007F:C350", "0200007F:1F90", state: "01", uid: 0, inode: 7)) == nil, "other listener address")
        #expect(find(row("0200007F:C350", "0100007F:1F90", state: "01", uid: 0, inode: 7)) == nil, "other caller address")
        #expect(find(row("0100007F:C351", "0100007F:1F90", state: "01", uid: 0, inode: 7)) == nil, "other caller port")

        let mapped = ProcNetTCP.Endpoint(address: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 127, 0, 0, 1], port: 0xC350)
        let mappedListener = ProcNetTCP.Endpoint(address: mapped.address, port: 0x1F90)
        #expect(mapped.unmappedIPv4 == caller && ProcNetTCP.Endpoint(address: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 127, 0, 0, 1], port: 1).unmappedIPv4 == nil)
        let ipv4Socket = find(row("0100007F:C350", "0100007F:1F90", state: "01", uid: 34, inode: 9), caller: mapped, listener: mappedListener)
        #expect(ipv4Socket?.uid == 34, "an IPv4 caller on a dual-stack listener is in tcp")
        let ipv6Socket = find(header, header + row("0000000000000000FFFF00000100007F:C350", "0000000000000000FFFF00000100007F:1F90",
                                                    state: "01", uid: 35, inode: 9), caller: mapped, listener: mappedListener)
        #expect(ipv6Socket?.uid == 35, "an IPv6 socket talking to a mapped address is in tcp6")
    }

    /// Finding 8's follow-up: a caller that half-closes (FIN_WAIT2 on its side) before we look it
    /// up, on a dual-stack listener that sees it as ::ffff:127.0.0.1, is still identified.
    @Test("A real IPv4 caller on a dual-stack listener, half-closed before the lookup, is found with its uid and pid")
    func dualStackHalfClosedCaller() async throws {
        let accepted = NIOLockedValueBox<Channel?>(nil)
        let server = try await ServerBootstrap(group: testGroup)
            .childChannelOption(.allowRemoteHalfClosure, value: true) // the caller's FIN must not close ours
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0 = channel }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "::", port: 0).get()
        defer { server.close(promise: nil) }
        let client = try BlockingSocket(port: server.localAddress!.port!)
        client.shutdownWrite()
        #expect(await eventually(timeout: 30) { accepted.withLockedValue { $0 } != nil })
        let channel = try #require(accepted.withLockedValue { $0 })
        let remote = try #require(channel.remoteAddress), local = try #require(channel.localAddress)
        #expect(remote.ipAddress == "::ffff:127.0.0.1", "the kernel reports the caller as mapped: \(remote)")
        // Look only once the caller's row has left ESTABLISHED for FIN_WAIT2 (our side
        // acknowledged its FIN), so the lookup sees a half-closed caller.
        let callerPort = UInt16(remote.port!)
        let halfClosed = await eventually(timeout: 30) {
            // Read to EOF: String(contentsOfFile:) stops after the first 4 KiB page of a /proc file.
            let text = FileHandle(forReadingAtPath: "/proc/net/tcp").map { String(decoding: $0.readDataToEndOfFile(), as: UTF8.self) } ?? ""
            return ProcNetTCP.rows(text).contains { $0.local == ProcNetTCP.Endpoint(address: [127, 0, 0, 1], port: callerPort) && $0.state == 0x05 }
        }
        #expect(halfClosed)
        let caller = await onThread { LocalCaller.fromLoopbackTCP(caller: remote, listener: local) }
        #expect(caller?.uid == getuid() && caller?.pid == getpid(), "\(String(describing: caller))")
        _ = client
    }

    @Test("An allow-list by group refuses a caller whose group is unknown; unknown is never 0 (root)")
    func unknownGroup() {
        let byGroup = CallerPolicy(uids: [], gids: [0])
        #expect(!byGroup.allows(LocalCaller(uid: 1000, gid: nil, pid: nil)))
        #expect(byGroup.allows(LocalCaller(uid: 1000, gid: 0, pid: nil)))
        #expect(!byGroup.allows(nil))
        #expect(CallerPolicy(uids: [1000], gids: []).allows(LocalCaller(uid: 1000, gid: nil, pid: nil)))
        let unknown = LocalCaller(uid: 1000, gid: nil, pid: nil)
        #expect(unknown.description == "uid 1000 gid unknown pid unknown exe ?")
        let line = AuditEvent(kind: .callerRefused, listener: "upstream:storage").with(caller: unknown).jsonLine
        #expect(line.contains("\"caller_uid\":1000") && !line.contains("caller_gid") && !line.contains("caller_pid"))
    }

    @Test("The inbound side reaches a local app listening on a unix socket (LocalServiceSocketPath)")
    func localServiceSocket() async throws {
        let path = "\(try Self.directory())/app.sock"
        let app = try await TestBackend(.echo, group: testGroup, unixSocketPath: path)
        try await withTeardown({ await app.stop() }) {
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
            try await withTeardown({ await storage.stop() }) {
                let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                                  storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
                try await withTeardown({ await agent.stop() }) {
                    let socket = try BlockingSocket(port: agent.boundAddress(of: "upstream:storage")!.port!)
                    socket.setReceiveTimeout(seconds: 30)
                    #expect(await onThread { echoPing(socket, "to a unix-socket app\n") })
                    #expect(app.connections == 1)
                }
            }
        }
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
