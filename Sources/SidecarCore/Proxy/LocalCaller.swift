import CSystemExtras
import FoundationEssentials
import Glibc
import NIOCore

/// The local process on the other end of an upstream connection: who is using this sidecar's
/// mesh identity. Goes into the audit log, and is checked against the upstream's allow-list.
/// What cannot be learned stays unknown (nil), never a default such as 0, which is root.
struct LocalCaller: Sendable, Equatable, CustomStringConvertible {
    let uid: UInt32
    let gid: UInt32?
    let pid: Int32?
    /// /proc/PID/exe; nil when it cannot be read (process gone, no permission).
    let executable: String?

    var description: String {
        "uid \(uid) gid \(gid.map(String.init) ?? "unknown") pid \(pid.map(String.init) ?? "unknown") exe \(executable ?? "?")"
    }

    init(uid: UInt32, gid: UInt32?, pid: Int32?) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        executable = pid.flatMap(Self.executable(of:))
    }

    static func executable(of pid: Int32) -> String? { linkTarget("/proc/\(pid)/exe") }

    /// readlink(2) as a String; nil when the link cannot be read.
    private static func linkTarget(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink(path, &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Unix sockets: the kernel's SO_PEERCRED, exact.
    static func fromPeerCredentials(_ channel: Channel) -> EventLoopFuture<LocalCaller?> {
        guard let provider = channel as? SocketOptionProvider else { return channel.eventLoop.makeSucceededFuture(nil) }
        let future: EventLoopFuture<bs_peer_credentials> = provider.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: bs_so_peercred()))
        return future.map { credentials -> LocalCaller? in
            LocalCaller(uid: credentials.uid, gid: credentials.gid, pid: credentials.pid)
        }.recover { _ in nil }
    }

    /// TCP over loopback, best effort: the caller's socket is the /proc/net/tcp[6] row whose
    /// local address is the caller's address *and* port and whose remote one is our
    /// listener's (the whole 4-tuple: a caller bound to 127.0.0.2 with a victim's port number
    /// is not the victim), still connected; its uid is the caller's, its inode leads to the
    /// process holding it. A row that cannot be found gives nil; a process that cannot be
    /// found leaves pid and gid unknown. Reads /proc: call off the event loop.
    static func fromLoopbackTCP(caller: SocketAddress, listener: SocketAddress) -> LocalCaller? {
        guard let callerKey = ProcNetTCP.Endpoint(caller), let listenerKey = ProcNetTCP.Endpoint(listener),
              let row = ProcNetTCP.callerRow(caller: callerKey, listener: listenerKey, table: readProcFile) else { return nil }
        let pid = owner(ofSocketInode: row.inode)
        return LocalCaller(uid: row.uid, gid: pid.flatMap(primaryGID(of:)), pid: pid)
    }

    /// /proc files report size 0, so read until EOF rather than by size.
    private static func readProcFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count <= 0 { break }
            data += chunk[0..<count]
        }
        return String(decoding: data, as: UTF8.self)
    }

    private static func owner(ofSocketInode inode: UInt64) -> Int32? {
        let target = "socket:[\(inode)]"
        guard let processes = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for entry in processes {
            guard let pid = Int32(entry), let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(entry)/fd") else { continue }
            if fds.contains(where: { linkTarget("/proc/\(entry)/fd/\($0)") == target }) { return pid }
        }
        return nil
    }

    private static func primaryGID(of pid: Int32) -> UInt32? {
        guard let status = readProcFile("/proc/\(pid)/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Gid:") }) else { return nil }
        return line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().first.flatMap { UInt32($0) }
    }
}

/// Which local callers may use an upstream: uid in `uids` or gid in `gids`. Empty: everyone.
struct CallerPolicy: Sendable, Equatable {
    let uids: Set<UInt32>
    let gids: Set<UInt32>

    var isRestricted: Bool { !uids.isEmpty || !gids.isEmpty }

    func allows(_ caller: LocalCaller?) -> Bool {
        guard isRestricted else { return true }
        guard let caller else { return false } // Unknown caller: fail closed.
        // An unknown gid matches no group.
        return uids.contains(caller.uid) || caller.gid.map(gids.contains) == true
    }

    /// Resolves names through the system's user and group databases (at listener start).
    static func resolve(users: [String], groups: [String]) throws -> CallerPolicy {
        let uids = try users.map { name -> UInt32 in
            if let number = UInt32(name) { return number }
            guard let entry = getpwnam(name) else { throw SidecarError.unknownAccount("user \"\(name)\"") }
            return entry.pointee.pw_uid
        }
        let gids = try groups.map { name -> UInt32 in
            if let number = UInt32(name) { return number }
            guard let entry = getgrnam(name) else { throw SidecarError.unknownAccount("group \"\(name)\"") }
            return entry.pointee.gr_gid
        }
        return CallerPolicy(uids: Set(uids), gids: Set(gids))
    }
}

/// The rows of /proc/net/tcp and /proc/net/tcp6 (pure parsing, tested on fixed text).
enum ProcNetTCP {
    static let established: UInt8 = 0x01
    /// States in which a socket still holds its connection (and an inode): a caller that
    /// already half-closed (FIN_WAIT) is still the caller. TIME_WAIT rows have no owner.
    static let connected: Set<UInt8> = [established, 0x04 /* FIN_WAIT1 */, 0x05 /* FIN_WAIT2 */,
                                        0x08 /* CLOSE_WAIT */, 0x09 /* LAST_ACK */, 0x0B /* CLOSING */]

    /// The caller's own row for a connection accepted from `caller` on `listener`. An IPv4
    /// caller accepted on a dual-stack listener appears to us as `::ffff:a.b.c.d`, but its
    /// socket is in /proc/net/tcp with plain IPv4 addresses (an IPv6 socket talking to a
    /// mapped address is in tcp6 as mapped): both are looked up.
    static func callerRow(caller: Endpoint, listener: Endpoint, table: (String) -> String?) -> Row? {
        var lookups = [(caller.isIPv6 ? "/proc/net/tcp6" : "/proc/net/tcp", caller, listener)]
        if let caller4 = caller.unmappedIPv4, let listener4 = listener.unmappedIPv4 {
            lookups.append(("/proc/net/tcp", caller4, listener4))
        }
        for (path, caller, listener) in lookups {
            guard let text = table(path) else { continue }
            if let row = rows(text).first(where: {
                $0.local == caller && $0.remote == listener && connected.contains($0.state) && $0.inode != 0
            }) { return row }
        }
        return nil
    }

    /// An address and port as the kernel prints them: the address's bytes as 32-bit words in
    /// host order, in hex.
    struct Endpoint: Equatable {
        let address: [UInt8]
        let port: UInt16
        var isIPv6: Bool { address.count == 16 }

        /// `::ffff:a.b.c.d` as the IPv4 endpoint it stands for.
        var unmappedIPv4: Endpoint? {
            guard isIPv6, address[0..<10].allSatisfy({ $0 == 0 }), address[10] == 0xFF, address[11] == 0xFF else { return nil }
            return Endpoint(address: Array(address[12...]), port: port)
        }

        init(address: [UInt8], port: UInt16) {
            self.address = address
            self.port = port
        }

        init?(_ socketAddress: SocketAddress) {
            guard let port = socketAddress.port else { return nil }
            switch socketAddress {
            case .v4(let v4):
                address = withUnsafeBytes(of: v4.address.sin_addr) { Array($0) } // network order
            case .v6(let v6):
                address = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            default:
                return nil
            }
            self.port = UInt16(port)
        }

        /// "0100007F:1F90" (IPv4) or 32 hex digits and a port (IPv6).
        init?(proc text: Substring) {
            let parts = text.split(separator: ":")
            guard parts.count == 2, parts[0].count == 8 || parts[0].count == 32, let port = UInt16(parts[1], radix: 16) else { return nil }
            var bytes: [UInt8] = []
            var index = parts[0].startIndex
            // Each 32-bit word of the address, as it lies in memory, is printed as a host-order
            // integer: its bytes in host order are the address's bytes.
            while index < parts[0].endIndex {
                let end = parts[0].index(index, offsetBy: 8)
                guard let word = UInt32(parts[0][index..<end], radix: 16) else { return nil }
                bytes += withUnsafeBytes(of: word) { Array($0) }
                index = end
            }
            address = bytes
            self.port = port
        }
    }

    struct Row: Equatable {
        let local: Endpoint
        let remote: Endpoint
        let state: UInt8
        let uid: UInt32
        let inode: UInt64
    }

    static func rows(_ text: String) -> [Row] {
        text.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 9, let local = Endpoint(proc: fields[1]), let remote = Endpoint(proc: fields[2]),
                  let state = UInt8(fields[3], radix: 16), let uid = UInt32(fields[7]), let inode = UInt64(fields[9]) else { return nil }
            return Row(local: local, remote: remote, state: state, uid: uid, inode: inode)
        }
    }
}
