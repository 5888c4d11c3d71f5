import SidecarModel

/// Frame-header checks that do not depend on connection state (RFC 9113 §6).
enum HTTP2FrameRules {
    static func problem(with header: HTTP2FrameHeader) -> HTTP2Failure? {
        let onConnection = header.streamID == 0
        switch header.type {
        case HTTP2FrameType.data, HTTP2FrameType.headers, HTTP2FrameType.continuation:
            if onConnection { return HTTP2Failure(code: .protocolError, reason: "frame type \(header.type) on stream 0") }
        case HTTP2FrameType.priority:
            if onConnection { return HTTP2Failure(code: .protocolError, reason: "PRIORITY on stream 0") }
            if header.length != 5 { return HTTP2Failure(code: .frameSizeError, reason: "PRIORITY of \(header.length) bytes") }
        case HTTP2FrameType.rstStream:
            if onConnection { return HTTP2Failure(code: .protocolError, reason: "RST_STREAM on stream 0") }
            if header.length != 4 { return HTTP2Failure(code: .frameSizeError, reason: "RST_STREAM of \(header.length) bytes") }
        case HTTP2FrameType.settings:
            if !onConnection { return HTTP2Failure(code: .protocolError, reason: "SETTINGS on a stream") }
            if header.has(HTTP2Flag.ack) && header.length != 0 {
                return HTTP2Failure(code: .frameSizeError, reason: "SETTINGS acknowledgement with a payload")
            }
            if header.length % 6 != 0 { return HTTP2Failure(code: .frameSizeError, reason: "SETTINGS of \(header.length) bytes") }
        case HTTP2FrameType.ping:
            if !onConnection { return HTTP2Failure(code: .protocolError, reason: "PING on a stream") }
            if header.length != 8 { return HTTP2Failure(code: .frameSizeError, reason: "PING of \(header.length) bytes") }
        case HTTP2FrameType.goaway:
            if !onConnection { return HTTP2Failure(code: .protocolError, reason: "GOAWAY on a stream") }
            if header.length < 8 { return HTTP2Failure(code: .frameSizeError, reason: "GOAWAY of \(header.length) bytes") }
        case HTTP2FrameType.windowUpdate:
            if header.length != 4 { return HTTP2Failure(code: .frameSizeError, reason: "WINDOW_UPDATE of \(header.length) bytes") }
        default:
            break
        }
        return nil
    }
}
