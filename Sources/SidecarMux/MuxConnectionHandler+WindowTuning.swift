import NIOCore

/// Growing the receive windows of streams the window holds back, and shrinking them back when
/// their readers fall behind (ReceiveWindowTuning): the connection's side of it, sampling
/// PINGs out and window changes from their ACKs.
extension MuxConnectionHandler {
    /// A PING with the connection's first frames, and another after its ACK: their round trip,
    /// before any stream's data queues on the path, is the shortest the tuning compares
    /// samples with.
    func probeRoundTrip() {
        guard let session, let tag = windowTuning.probe() else { return }
        session.ping(tag: tag)
    }

    func tuneWindow(received count: Int, on streamID: Int32) {
        guard let session, let tag = windowTuning.received(count, on: streamID, now: clock()) else { return }
        session.ping(tag: tag) // sent by the pump that follows the input
    }

    func tuneWindows(acknowledged tag: UInt64) {
        guard let session else { return }
        for change in windowTuning.acknowledged(tag: tag, now: clock()) where streams[change.streamID] != nil {
            session.setWindow(change.window, on: change.streamID)
        }
        probeRoundTrip()
    }

    /// After a delivery: data still queued means the stream's reader is behind.
    func noteReaderBehind(_ stream: MuxStreamChannel) {
        let waiting = stream.inbound.bytes
        if waiting > 0 { windowTuning.readerFellBehind(on: stream.streamID, waiting: waiting) }
    }
}
