import CSystemExtras
import Foundation
import Glibc
import NIOCore

/// The local process on the other end of an upstream connection: who is using this sidecar's
/// mesh identity. Goes into the audit log, and is checked against the upstream's allow-list.
struct LocalCaller: Sendable, Equatable, CustomStringConvertible {
    let uid: UInt32
    let gid: UInt32
    let pid: Int32
    /// /proc/PID/exe; nil when it cannot be read (process gone, no permission).
    let executable: String?

    var description: String { "uid \(uid) gid \(gid) pid \(pid) exe \(executable ?? "?")" }

    init(uid: UInt32, gid: UInt32, pid: Int32) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        executable = Self.executable(of: pid)
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

    /// TCP over loopback, best effort: finds the socket's inode for the caller's port in
    /// /proc/net/tcp[6], then the process holding it. Processes we may not inspect, or a
    /// connection gone meanwhile, give nil. Reads /proc: call off the event loop.
    static func fromLoopbackTCP(callerPort: Int, listenerPort: Int) -> LocalCaller? {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = readProcFile(table) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count > 9,
                      let local = fields[1].split(separator: ":").last.flatMap({ Int($0, radix: 16) }),
                      let remote = fields[2].split(separator: ":").last.flatMap({ Int($0, radix: 16) }),
                      local == callerPort, remote == listenerPort,
                      let uid = UInt32(fields[7]), let inode = UInt64(fields[9]), inode != 0 else { continue }
                let pid = owner(ofSocketInode: inode) ?? 0
                return LocalCaller(uid: uid, gid: pid > 0 ? primaryGID(of: pid) ?? 0 : 0, pid: pid)
            }
        }
        return nil
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
        return uids.contains(caller.uid) || gids.contains(caller.gid)
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
