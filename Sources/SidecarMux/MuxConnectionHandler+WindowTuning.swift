import NIOCore

/// Growing the receive windows of streams the window holds back (ReceiveWindowTuning): the
/// connection's side of it, sampling PINGs out and window updates from their ACKs.
extension MuxConnectionHandler {
    /// A PING with the connection's first frames: its round trip, before any stream's data
    /// queues on the path, is the shortest the tuning compares samples with.
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
        for growth in windowTuning.acknowledged(tag: tag, now: clock()) where streams[growth.streamID] != nil {
            session.setWindow(growth.window, on: growth.streamID)
        }
    }

    /// After a delivery: data still queued means the stream's reader is behind.
    func noteReaderBehind(_ stream: MuxStreamChannel) {
        if stream.hasUndeliveredInput { windowTuning.readerFellBehind(on: stream.streamID) }
    }

}
