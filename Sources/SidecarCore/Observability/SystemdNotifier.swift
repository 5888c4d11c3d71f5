import Glibc

/// systemd's readiness protocol (`Type=notify`) without libsystemd: one datagram of
/// `KEY=value` lines to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace). Without the variable every call does nothing.
package struct SystemdNotifier: Sendable {
    /// The socket address bytes (`sun_path` content and its length), or nil when unusable.
    let address: [UInt8]?

    package init(environment: [String: String]) {
        address = environment["NOTIFY_SOCKET"].flatMap(Self.socketAddress)
    }

    /// `sun_path` bytes for NOTIFY_SOCKET: a path must be absolute; `@` stands for the leading
    /// NUL of an abstract name. Too long for sockaddr_un, or anything else: nil.
    static func socketAddress(_ value: String) -> [UInt8]? {
        var bytes = Array(value.utf8)
        guard let first = bytes.first, !bytes.contains(0) else { return nil }
        switch first {
        case UInt8(ascii: "/"): break
        case UInt8(ascii: "@") where bytes.count > 1: bytes[0] = 0
        default: return nil
        }
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        return bytes.count < capacity ? bytes : nil
    }

    var isActive: Bool { address != nil }

    /// Sent once every listener is bound and serving.
    package func ready(status: String) { send("READY=1\nSTATUS=\(status)\nMAINPID=\(getpid())") }
    /// Sent when the drain starts.
    package func stopping(status: String) { send("STOPPING=1\nSTATUS=\(status)") }

    /// Best effort: systemd not listening must not stop the sidecar.
    @discardableResult
    func send(_ message: String) -> Bool {
        guard let address else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let payload = Array(message.utf8)
        let sent = Self.withSocketAddress(address) { pointer, length in
            sendto(fd, payload, payload.count, Int32(MSG_NOSIGNAL), pointer, length)
        }
        return sent == payload.count
    }

    /// `body` gets a sockaddr_un holding `address` (from `socketAddress`) and its length.
    static func withSocketAddress<T>(_ address: [UInt8], _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { path in
            for (index, byte) in address.enumerated() { path[index] = byte }
        }
        // An abstract name's length is exact (no terminating NUL); a path's includes none either.
        let length = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + address.count)
        return withUnsafePointer(to: &socketAddress) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}
