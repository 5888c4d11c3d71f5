import Glibc

/// Writes to the process's stderr with write(2), ignoring failure. Foundation's
/// `FileHandle.write(_:)` traps on an error such as EPIPE, and a log shipper that went away
/// must never take the proxy, and every transfer through it, down with it.
public enum StandardError {
    public static func write(_ text: String) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { return }
                offset += written
            }
        }
    }
}
