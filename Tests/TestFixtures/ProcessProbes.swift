import Foundation
import Glibc
import NIOCore

/// HTTP/1.1 through `port` answers (the repository backend) within a few attempts.
package func eventuallyEchoes(http port: Int) async -> Bool {
    for _ in 0..<50 {
        let run = try? await ProcessRunner.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                                                "http://127.0.0.1:\(port)/repository/ping"])
        if run?.output == "200" { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return false
}

/// Resident memory of a process (its VmRSS).
package func processResidentBytes(_ pid: Int32) -> Int { procStatusBytes(pid, "VmRSS:") }

/// The highest resident memory of a process since it started or since `resetPeakResidentBytes`.
package func processPeakResidentBytes(_ pid: Int32) -> Int { procStatusBytes(pid, "VmHWM:") }

/// Starts a new peak (VmHWM) measurement: writes 5 to /proc/PID/clear_refs (Linux 4.0+).
package func resetPeakResidentBytes(_ pid: Int32) -> Bool {
    guard let handle = FileHandle(forWritingAtPath: "/proc/\(pid)/clear_refs") else { return false }
    defer { try? handle.close() }
    return (try? handle.write(contentsOf: Data("5".utf8))) != nil
}

/// A `kB` line of /proc/PID/status, in bytes (0 when unreadable).
private func procStatusBytes(_ pid: Int32, _ field: String) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field) }) else { return 0 }
    return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) * 1024
}

/// A local "service" whose accept queue is full: a connection to it stays in SYN until the
/// queue is drained (the kernel drops the SYN and the client retries), so a dial to it is
/// held open for as long as the test wants.
package final class StalledListener: @unchecked Sendable {
    package let port: Int
    private let fd: Int32
    private let filler: BlockingSocket

    package init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(listener, 0) // room for one pending connection: the filler below takes it
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        fd = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        filler = try BlockingSocket(port: port)
    }

    /// Accepts up to `count` connections until `deadline`, reading what each sends until it
    /// ends (reset or EOF). The filler's connection is the first.
    package func acceptAll(until deadline: NIODeadline, expecting count: Int) -> [[UInt8]] {
        var received: [[UInt8]] = []
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        filler.shutdownWrite()
        while received.count < count && NIODeadline.now() < deadline {
            let connection = accept(fd, nil, nil)
            guard connection >= 0 else { continue }
            let socket = BlockingSocket(adopting: connection)
            socket.setReceiveTimeout(seconds: 10)
            var bytes: [UInt8] = []
            while case let part = socket.receiveSome(), !part.isEmpty { bytes += part }
            received.append(bytes)
        }
        return received
    }

    package func close() { Glibc.close(fd) }
}
