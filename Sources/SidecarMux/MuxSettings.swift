import NIOCore

/// The ALPN id of the multiplexed transport between our sidecars: HTTP/2 whose streams are
/// CONNECT tunnels. Deliberately not "h2": an L4 tunnel must never claim to speak plain HTTP/2
/// to whatever else is on the port (Consul #4466).
package enum MuxProtocol {
    package static let alpn = "backup-sidecar-mux/1"
}

package struct MuxSettings: Sendable {
    /// Streams per connection, in each direction.
    package var maxConcurrentStreams: Int
    /// Per-stream receive window: the most one stream buffers for a slow local reader. 2 MiB
    /// keeps one bulk stream within a few percent of a plain TLS connection on loopback
    /// (256 KiB: 40% slower); idle streams hold none of it.
    var streamWindow: Int32
    var connectionWindow: Int32
    /// A connection without streams for this long goes away (GOAWAY, then close); nil: never.
    package var idleTimeout: TimeAmount?
    /// A connection that has received nothing for this long is sent a PING; one still silent
    /// a whole interval after its PING is taken for dead (a host gone without a FIN or RST)
    /// and closed, cutting its streams, rather than leaving them to hang until TCP gives up.
    /// nil: no keepalive.
    package var keepaliveInterval: TimeAmount?

    package init(maxConcurrentStreams: Int = 100, streamWindow: Int32 = 2 << 20, connectionWindow: Int32 = 64 << 20,
                idleTimeout: TimeAmount? = nil, keepaliveInterval: TimeAmount? = .seconds(30)) {
        self.maxConcurrentStreams = maxConcurrentStreams
        self.streamWindow = streamWindow
        self.connectionWindow = connectionWindow
        self.idleTimeout = idleTimeout
        self.keepaliveInterval = keepaliveInterval
    }
}

/// A CONNECT request that opened a stream on the server side.
package struct MuxStreamRequest: Sendable {
    package let streamID: Int32
    /// What the client asked to reach (the destination service).
    package let authority: String
}

/// Outbound user event on a mux connection: GOAWAY, finish the open streams, then close.
package struct MuxGracefulShutdown: Sendable {
    package init() {}
}
