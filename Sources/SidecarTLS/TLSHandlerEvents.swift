import NIOCore
import SidecarModel

/// Raised to handlers after the TLS handler once the peer is verified.
package enum TLSEvent: Sendable {
    case handshakeCompleted(TLSPeer)
    /// An HTTPS server passed chain and name verification (or verification is off).
    case serverVerified
}

package enum TLSError: Error, CustomStringConvertible, Equatable {
    /// The peer's certificate failed our verification (chain or identity).
    case peerRejected(PeerVerificationError)
    /// The handshake failed for a protocol reason (bad version, no shared cipher, garbage...).
    case handshakeFailed(String)
    case handshakeTimeout
    /// Server: the peer sent nothing at all within `firstByteTimeout` (a silent connection
    /// holding a slot).
    case firstByteTimeout
    /// TCP closed without close_notify: the stream may be truncated, never treat it as a clean end.
    case uncleanShutdown
    case protocolError(String)

    package var description: String {
        switch self {
        case .peerRejected(let reason): return "peer rejected: \(reason)"
        case .handshakeFailed(let reason): return "handshake failed: \(reason)"
        case .handshakeTimeout: return "handshake timed out"
        case .firstByteTimeout: return "handshake timed out: the peer sent nothing"
        case .uncleanShutdown: return "connection closed without TLS close_notify (possible truncation)"
        case .protocolError(let reason): return "TLS protocol error: \(reason)"
        }
    }
}

/// Outbound user event: end the connection without close_notify, so the peer sees a
/// truncation rather than a clean end of stream (used to propagate aborts).
package struct TLSAbortRequest: Sendable {
    package init() {}
}

/// Outbound user event: the peer was refused after its handshake (by the intentions): its
/// session is dropped from the cache, so the refused identity neither resumes nor holds a slot.
package struct TLSForgetSession: Sendable {
    package init() {}
}

package struct TLSHandlerConfiguration: Sendable {
    package var handshakeTimeout: TimeAmount?
    /// Until the peer's first byte (its ClientHello): much shorter than the handshake timeout,
    /// because a peer that says nothing is not slow, it is holding a slot. nil: no such limit.
    package var firstByteTimeout: TimeAmount?
    /// Plaintext is delivered in buffers of up to this size: big enough that bulk transfers
    /// cross the pipeline a few records at a time.
    var plaintextChunkSize: Int

    package init(handshakeTimeout: TimeAmount? = .seconds(10), firstByteTimeout: TimeAmount? = nil,
                plaintextChunkSize: Int = 64 * 1024) {
        self.handshakeTimeout = handshakeTimeout
        self.firstByteTimeout = firstByteTimeout
        self.plaintextChunkSize = plaintextChunkSize
    }
}
