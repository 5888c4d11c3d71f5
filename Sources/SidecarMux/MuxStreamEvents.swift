// The events a mux stream channel takes, and what it and its connection know of each other.

/// Outbound user event on a server-side stream: answer the CONNECT. 200 lets data flow; any
/// other status ends the stream (the destination refused it). Ignored on other channels.
package struct MuxStreamResponse: Sendable {
    package let status: Int
    package init(status: Int) { self.status = status }
}

/// Outbound user event on a server-side stream not yet answered: refuse it with
/// RST_STREAM(REFUSED_STREAM), which tells the client nothing was processed and the stream may
/// be retried on another connection (a connection being retired, a draining sidecar).
package struct MuxStreamRefusal: Sendable {
    package init() {}
}

/// Channels that are streams of a mux connection say which.
package protocol MuxStreamIdentifying {
    var muxStreamID: Int32 { get }
}

/// What a stream channel needs from the connection it rides on (same event loop).
protocol MuxStreamOwner: AnyObject {
    func streamHasOutput(_ stream: MuxStreamChannel)
    func streamConsumed(_ count: Int, on streamID: Int32)
    func streamReset(_ streamID: Int32, errorCode: UInt32)
    func streamRespond(_ stream: MuxStreamChannel, status: Int)
    /// `takeOutbound` ran during a send: finish promises and writability after it returns.
    func streamTouchedDuringSend(_ stream: MuxStreamChannel)
}
