import COpenSSL

/// The messages OpenSSL queued on this thread, drained (so the next call starts clean).
enum OpenSSLErrorQueue {
    static func drain() -> [String] {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages
    }

    static func clear() { ERR_clear_error() }

    /// The drained queue as one line, or `fallback` when nothing was queued.
    static func summary(or fallback: String) -> String {
        let messages = drain()
        return messages.isEmpty ? fallback : messages.joined(separator: "; ")
    }
}

/// Errors building TLS material (startup and rotation), always with a readable reason.
package struct TLSMaterialError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// The OpenSSL library this process loaded (not the headers it was built against).
package enum OpenSSLLibrary {
    package static var version: String { String(cString: OpenSSL_version(Int32(OPENSSL_VERSION))) }
}
