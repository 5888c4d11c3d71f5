import NIOCore

/// Growing the receive windows of streams the window holds back (ReceiveWindowTuning): the
/// connection's side of it, sampling PINGs out and window updates from their ACKs.
extension MuxConnectionHandler {
    func tuneWindow(received count: Int, on streamID: Int32) {
        guard let session, let tag = windowTuning.received(count, on: streamID, now: Self.now) else { return }
        session.ping(tag: tag) // sent by the pump that follows the input
    }

    func tuneWindows(acknowledged tag: UInt64) {
        guard let session else { return }
        for growth in windowTuning.acknowledged(tag: tag, now: Self.now) where streams[growth.streamID] != nil {
            session.setWindow(growth.window, on: growth.streamID)
        }
    }

    private static var now: Int64 { Int64(NIODeadline.now().uptimeNanoseconds) }
}
