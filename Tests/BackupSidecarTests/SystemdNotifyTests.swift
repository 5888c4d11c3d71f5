import Foundation
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore

/// A datagram socket standing in for systemd's notify socket.
final class NotifySocketListener: @unchecked Sendable {
    let fd: Int32
    let name: String

    /// `abstract`: bound in the abstract namespace, named `@…` as systemd does.
    init(abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        let unique = "backup-sidecar-notify-\(UUID().uuidString.prefix(8))"
        name = abstract ? "@\(unique)" : "\(NSTemporaryDirectory())\(unique).sock"
        guard let address = SystemdNotifier.socketAddress(name),
              SystemdNotifier.withSocketAddress(address, { bind(fd, $0, $1) }) == 0 else { throw POSIXError(.EADDRINUSE) }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(fd)
        if !name.hasPrefix("@") { unlink(name) }
    }

    /// The next datagram, or nil after 60 s.
    func receive() async -> String? {
        let fd = self.fd
        return await onThread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(fd, &buffer, buffer.count, 0)
            return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
        }
    }
}

@Suite("systemd notify protocol", .serialized)
struct SystemdNotifyTests {
    @Test("NOTIFY_SOCKET: absolute paths and @abstract names are used; anything else is ignored", arguments: [
        ("/run/systemd/notify", Array("/run/systemd/notify".utf8)),
        ("@abstract-name", [0] + Array("abstract-name".utf8)),
        ("relative/path", nil), ("", nil), ("@", nil), ("/with\u{0}nul", nil),
        ("/" + String(repeating: "x", count: 200), nil),
    ] as [(String, [UInt8]?)])
    func socketAddress(value: String, expected: [UInt8]?) {
        #expect(SystemdNotifier.socketAddress(value) == expected)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": value]).isActive == (expected != nil))
    }

    @Test("Without NOTIFY_SOCKET nothing is sent, and a socket nobody listens on does not matter")
    func inactive() {
        #expect(!SystemdNotifier(environment: [:]).send("READY=1"))
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "/nonexistent/notify.sock"]).send("READY=1"))
    }

    @Test("The real binary: READY=1 once the listener accepts, STOPPING=1 when SIGTERM starts the drain", arguments: [false, true])
    func binaryNotifies(abstract: Bool) async throws {
        let listener = try NotifySocketListener(abstract: abstract)
        let (port, service) = SidecarBinary.publicListenerOnly("notify-\(abstract).json")
        let sidecar = try SidecarProcess(["run", "--admin-bind", "off", "--service-file", service] + SidecarBinary.certs(),
                                         logName: "notify-\(abstract).log", environment: ["NOTIFY_SOCKET": listener.name])
        let ready = try #require(await listener.receive())
        #expect(ready.split(separator: "\n").contains("READY=1"), "\(ready)")
        #expect(ready.contains("MAINPID=\(sidecar.process.processIdentifier)"), "\(ready)")
        #expect((try? BlockingSocket(port: port)) != nil, "ready means the listener already accepts")
        sidecar.sendTerminate()
        let stopping = try #require(await listener.receive())
        #expect(stopping.hasPrefix("STOPPING=1\n"), "\(stopping)")
        #expect(await sidecar.exit().status == 0)
    }
}
