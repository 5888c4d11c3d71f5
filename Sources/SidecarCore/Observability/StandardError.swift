import Glibc

/// Writes to the process's stderr with write(2), ignoring failure. Foundation's
/// `FileHandle.write(_:)` traps on an error such as EPIPE, and a log shipper that went away
/// must never take the proxy, and every transfer through it, down with it.
package enum StandardError {
    package static func write(_ text: String) {
        var text = text
        text.withUTF8 { _ = DescriptorWriter.writeAll(2, UnsafeRawBufferPointer($0), waitWhenFull: false) }
    }
}

/// write(2) until every byte is out, through EINTR and partial writes.
enum DescriptorWriter {
    /// nil, or the errno that stopped it. `waitWhenFull` waits out EAGAIN (a full non-blocking
    /// pipe) instead of stopping there.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, waitWhenFull: Bool) -> Int32? {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written > 0 {
                offset += written
                continue
            }
            if written == 0 { return EIO }
            if errno == EINTR { continue }
            if errno == EAGAIN && waitWhenFull {
                usleep(1000)
                continue
            }
            return errno
        }
        return nil
    }
}
