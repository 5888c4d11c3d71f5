/// The service-to-client direction of the HTTP/2 L7 filter (no I/O). The service's bytes pass
/// unchanged; the filter's own frames (denials, flow-control credit, GOAWAY) are spliced in
/// only between two of the service's frames, never before the service's own first frame (its
/// SETTINGS must open the connection, §3.4) and never inside a header block (HEADERS or
/// PUSH_PROMISE followed by CONTINUATION frames must arrive back to back, RFC 9113 §6.10).
/// On the way it notes what the request side must know: the service's HEADER_TABLE_SIZE
/// settings and the streams it resets.
struct HTTP2ResponseSplicer {
    enum Observation: Equatable {
        case settings(headerTableSize: Int?)
        case reset(streamID: UInt32)
    }

    /// Settings payloads larger than this are not read (a service sends a few settings).
    static let maxSettingsPayload = 16 * 1024

    private var scanner = HTTP2FrameScanner()
    private var frame: HTTP2FrameHeader?
    private var insideHeaderBlock = false
    /// The service's first frame (its connection preface) has been passed on whole.
    private var prefaceDone = false
    private var settingsPayload: [UInt8] = []
    private var queued: [[UInt8]] = []
    /// After our last frame, the service's bytes are no longer passed on.
    private(set) var closed = false

    /// Bytes of our own frames waiting for the service to finish a frame.
    private(set) var queuedBytes = 0

    private var canSplice: Bool { prefaceDone && scanner.atFrameBoundary && !insideHeaderBlock }

    /// Our frame for the client: returned if it can be written now, else queued until the
    /// service's current frame (or header block) is complete.
    mutating func splice(_ frame: [UInt8]) -> [UInt8]? {
        if canSplice && queued.isEmpty { return frame }
        queued.append(frame)
        queuedBytes += frame.count
        return nil
    }

    /// The last frame we send (a GOAWAY before closing): written now if it can be, preceded by
    /// an empty SETTINGS as our own connection preface if the service has sent nothing yet;
    /// nil if the service is in the middle of a frame. Nothing of the service passes after it.
    mutating func spliceLast(_ frame: [UInt8]) -> [UInt8]? {
        closed = true
        if !prefaceDone && scanner.atFrameBoundary {
            return HTTP2Frames.frame(type: HTTP2FrameType.settings, streamID: 0) + frame
        }
        return canSplice ? frame : nil
    }

    /// What to write to the client for `input` from the service, queued frames spliced in.
    mutating func pass(_ input: UnsafeRawBufferPointer) -> (pieces: [HTTP2Piece], observations: [Observation]) {
        if closed { return ([], []) }
        var pieces: [HTTP2Piece] = []
        var observations: [Observation] = []
        var passedUpTo = 0
        var scanner = self.scanner
        defer { self.scanner = scanner }
        scanner.scan(input) { event in
            switch event {
            case .header(let header):
                frame = header
                settingsPayload.removeAll(keepingCapacity: true)
            case .payload(let range):
                if let frame, frame.type == HTTP2FrameType.settings, frame.length <= Self.maxSettingsPayload {
                    settingsPayload += input[range]
                }
            case .frameEnd(let end):
                guard let header = frame else { return }
                prefaceDone = true
                observe(header, &observations)
                if !insideHeaderBlock && !queued.isEmpty {
                    pieces.append(.input(passedUpTo..<end))
                    pieces += queued.map { .bytes($0) }
                    queued.removeAll()
                    queuedBytes = 0
                    passedUpTo = end
                }
            }
        }
        if passedUpTo < input.count { pieces.append(.input(passedUpTo..<input.count)) }
        return (pieces, observations)
    }

    private mutating func observe(_ header: HTTP2FrameHeader, _ observations: inout [Observation]) {
        switch header.type {
        case HTTP2FrameType.headers, HTTP2FrameType.pushPromise, HTTP2FrameType.continuation:
            insideHeaderBlock = !header.has(HTTP2Flag.endHeaders)
        case HTTP2FrameType.settings where !header.has(HTTP2Flag.ack):
            let payload = header.length <= Self.maxSettingsPayload ? settingsPayload : []
            let size = HTTP2Frames.settings(payload)?
                .last { $0.id == HTTP2Frames.settingsHeaderTableSize }.map { Int($0.value) }
            observations.append(.settings(headerTableSize: size))
        case HTTP2FrameType.rstStream:
            observations.append(.reset(streamID: header.streamID))
        default:
            break
        }
    }
}
