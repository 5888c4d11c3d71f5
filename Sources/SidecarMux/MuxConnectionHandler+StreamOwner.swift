/// What a mux connection's stream channels call on it (same event loop).
extension MuxConnectionHandler: MuxStreamOwner {
    func streamHasOutput(_ stream: MuxStreamChannel) {
        session?.resume(streamID: stream.streamID)
        pump()
    }

    func streamConsumed(_ count: Int, on streamID: Int32) {
        session?.consumed(count, on: streamID)
        if count > 0 { pump() }
    }

    func streamReset(_ streamID: Int32, errorCode: UInt32) {
        session?.reset(streamID: streamID, errorCode: errorCode)
        pump()
    }

    func streamRespond(_ stream: MuxStreamChannel, status: Int) {
        guard case .server = role, streams[stream.streamID] === stream else { return }
        if status == 200 {
            session?.submitResponse(streamID: stream.streamID, status: 200, source: stream)
        } else {
            stream.answeredWithRefusal()
            session?.submitResponse(streamID: stream.streamID, status: status, source: nil)
        }
        pump()
    }

    func streamTouchedDuringSend(_ stream: MuxStreamChannel) {
        touchedDuringSend.append(stream)
    }
}
