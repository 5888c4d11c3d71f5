import NIOCore

extension ConnectionTable {
    /// One accepted connection or mux stream, as the table holds it.
    struct Tracked {
        enum Kind {
            /// Accepted on a public listener, handshake not yet complete.
            case handshaking
            /// A verified plain connection, or a local caller's connection: one tunnel.
            case tunnel
            /// A connection that negotiated the mux: transport, its streams are the tunnels.
            case muxCarrier
            /// A stream on a mux connection (whose channel is its `parent`).
            case stream
        }

        var listener: String
        var channel: Channel
        var kind: Kind
        /// The audit lines' `connection_id`.
        var id: String
        /// A joined tunnel: what `/connections` shows, and its byte counts (on its event loop).
        var tunnel: TunnelRecord?
        var stats: NIOLoopBound<ConnectionStats>?
        /// An inbound tunnel about to be joined or joined: how it was authorized, to be
        /// re-checked when the intentions change.
        var inbound: InboundAuthorization?
        /// An accepted mux connection once it is set up: whose it is, to be re-checked when
        /// the intentions change.
        var carrier: CarrierAuthorization?
        /// Cut by a revocation, or a mux connection retired by one (it stays listed until it closes).
        var revoked = false
        var accepted = NIODeadline.now()
        /// Handshaking: the peer has sent at least one byte.
        var spoke = false
        var isStream: Bool { kind == .stream }
        var isMuxCarrier: Bool { kind == .muxCarrier }
    }
}
