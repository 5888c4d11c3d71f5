import Foundation
import Glibc
@testable import SidecarTLS

/// A plain blocking TCP client, so tests drive the sidecars the way a backup agent would,
/// with no NIO on the client side.
package final class BlockingSocket: @unchecked Sendable {
    package private(set) var fd: Int32

    package init(port: Int, host: String = "127.0.0.1") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            let error = POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            close(fd)
            // deinit still runs for an initializer that throws after every property is set: it
            // must not close the number again (by then it may be another thread's socket).
            fd = -1
            throw error
        }
    }

    /// Wraps an already connected socket (e.g. a unix socket).
    package init(adopting fd: Int32) { self.fd = fd }

    deinit { if fd >= 0 { close(fd) } }

    package func setReceiveTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes everything; false if the connection broke.
    @discardableResult
    package func send(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { return false }
            offset += written
        }
        return true
    }

    package func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// One read: what arrived, or nothing at EOF, error or timeout.
    package func receiveSome(max: Int = 1 << 16) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return count > 0 ? Array(buffer[..<count]) : []
    }

    /// Ends the connection with a reset (SO_LINGER 0): what a crashed or killed client does.
    /// Only when no other thread is using the socket (the fd is closed here).
    package func abort() {
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        close(fd)
        fd = -1
    }

    /// Reads until EOF (or error/timeout): total bytes and their sha256, plus whether it ended
    /// with a clean EOF (false: reset or timeout).
    package func receiveAll(keepingPrefix prefixLength: Int = 0) -> (count: Int, sha256: String, prefix: [UInt8], cleanEOF: Bool) {
        let digest = SHA256Digest()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total = 0
        var prefix: [UInt8] = []
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return (total, digest.finalizeHex(), prefix, true) }
            if count < 0 { return (total, digest.finalizeHex(), prefix, false) }
            var chunk = buffer[0..<count]
            if prefix.count < prefixLength {
                let take = min(prefixLength - prefix.count, count)
                prefix += chunk.prefix(take)
                chunk = chunk.dropFirst(take)
            }
            chunk.withUnsafeBytes { digest.update($0) }
            total += count
        }
    }
}

/// Random data in 1 MiB chunks with a running digest.
package struct RandomStream {
    package static func send(_ socket: BlockingSocket, bytes: Int) -> (sent: Int, sha256: String) {
        let digest = SHA256Digest()
        var remaining = bytes
        var sent = 0
        while remaining > 0 {
            let chunk = secureRandomBytes(min(remaining, 1 << 20))
            digest.update(chunk)
            guard socket.send(chunk) else { break }
            sent += chunk.count
            remaining -= chunk.count
        }
        return (sent, digest.finalizeHex())
    }
}

/// Runs blocking work on a dedicated thread and awaits it.
package func onThread<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: work()) }.start()
    }
}

