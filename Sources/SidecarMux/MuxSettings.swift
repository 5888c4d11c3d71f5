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
    /// Per-stream receive window a stream starts with: what it buffers for a slow local reader
    /// unless it grows (ReceiveWindowTuning). Idle streams hold none of it.
    var streamWindow: Int32
    /// How far a stream's window may grow while the window is what holds it back. 16 MiB
    /// carried 380 MB/s over a 20 ms round trip (bench/wan.sh; credit returns in halves, so
    /// about half of window/RTT). The connection window bounds all streams together.
    var maximumStreamWindow: Int32
    /// Samples in a row that must call for a larger window before a stream's doubles.
    var windowSamplesPerDoubling = 3
    var connectionWindow: Int32
    /// A connection without streams for this long goes away (GOAWAY, then close); nil: never.
    package var idleTimeout: TimeAmount?
    /// A connection that has received nothing for this long is sent a PING; one still silent
    /// a whole interval after its PING is taken for dead (a host gone without a FIN or RST)
    /// and closed, cutting its streams, rather than leaving them to hang until TCP gives up.
    /// nil: no keepalive.
    package var keepaliveInterval: TimeAmount?

    package init(maxConcurrentStreams: Int = 100, streamWindow: Int32 = 1 << 20, maximumStreamWindow: Int32 = 16 << 20,
                connectionWindow: Int32 = 64 << 20, idleTimeout: TimeAmount? = nil, keepaliveInterval: TimeAmount? = .seconds(30)) {
        self.maxConcurrentStreams = maxConcurrentStreams
        self.streamWindow = streamWindow
        self.maximumStreamWindow = maximumStreamWindow
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
