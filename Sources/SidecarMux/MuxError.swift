import CNGHTTP2
import NIOCore

/// Why a mux session, connection or stream failed.
package enum MuxError: Error, CustomStringConvertible, Equatable {
    case sessionSetup(String)
    /// The peer broke HTTP/2 (or our framing): the whole connection ends.
    case protocolViolation(String)
    /// The stream could not be opened, or was refused before it was processed (safe to retry).
    case streamRefused(String)
    /// The destination answered the CONNECT with a status other than 200.
    case connectRejected(status: Int)
    /// The stream was reset by the peer (or the connection under it ended) mid-transfer.
    case streamReset(errorCode: UInt32)
    case connectionClosed
    /// The stream was closed while the peer's data still waited to be read: a cut, not an end.
    case unreadInputDiscarded

    package var description: String {
        switch self {
        case .sessionSetup(let what): return "mux session setup failed: \(what)"
        case .protocolViolation(let what): return "mux protocol error: \(what)"
        case .streamRefused(let what): return "mux stream refused: \(what)"
        case .connectRejected(let status): return "destination answered \(status) to the mux CONNECT"
        case .streamReset(let code): return "mux stream reset (HTTP/2 error \(code))"
        case .connectionClosed: return "mux connection closed"
        case .unreadInputDiscarded: return "mux stream closed before the peer's data was read"
        }
    }
}

/// The libnghttp2 this process loaded.
package enum NGHTTP2Library {
    package static var version: String {
        guard let info = nghttp2_version(0) else { return "unknown" }
        return String(cString: info.pointee.version_str)
    }
}
