@testable import SidecarCore

/// One cleartext HTTP/2 connection (prior knowledge) over a blocking socket, for exchanges
/// that must happen one after another on the same connection: curl 7.88 cannot reuse an h2c
/// connection across requests. Blocking: use it inside `onThread`.
package final class TestH2Connection: @unchecked Sendable {
    package struct Response {
        package var status: String?
        package var headers: [HTTP2HeaderField] = []
        package var trailers: [HTTP2HeaderField] = []
        package var body: [UInt8] = []
        package var text: String { String(decoding: body, as: UTF8.self) }
        package func header(_ name: String) -> String? { (headers + trailers).first { $0.name == name }?.value }
    }

    package struct ConnectionEnded: Error, CustomStringConvertible {
        package let description: String
    }

    private let socket: BlockingSocket
    private let encoder = TestH2Client()
    /// The service's HPACK context: every response block is decoded in order.
    private let decoder = HeaderBlockDecoder()
    private var nextStream: UInt32 = 1
    private var unread: [UInt8] = []
    /// Flow-control credit the peer returned on the connection (WINDOW_UPDATE on stream 0).
    package private(set) var connectionCredit = 0
    /// RST_STREAM error codes received, by stream.
    package private(set) var resets: [UInt32: UInt32] = [:]

    package init(port: Int) throws {
        socket = try BlockingSocket(port: port)
        socket.setReceiveTimeout(seconds: 10)
        socket.send(TestH2Client.start)
    }

    /// Sends one request (body in DATA frames of at most 16 KiB) and reads until its response ends.
    package func request(_ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) throws -> Response {
        let stream = nextStream
        nextStream += 2
        var bytes = encoder.request(stream, method, path, headers, endStream: body == nil)
        if let body {
            var offset = 0
            repeat {
                let end = min(offset + 16384, body.count)
                bytes += TestH2Client.data(stream, Array(body[offset..<end]), endStream: end == body.count)
                offset = end
            } while offset < body.count
        }
        socket.send(bytes)
        return try response(on: stream)
    }

    private func response(on stream: UInt32) throws -> Response {
        var response = Response()
        while true {
            let frame = try nextFrame()
            let header = frame.header
            switch header.type {
            case HTTP2FrameType.settings where !header.has(HTTP2Flag.ack):
                socket.send(TestH2Client.settingsAck)
            case HTTP2FrameType.headers:
                // Responses here are small: one HEADERS frame each, never padded or prioritised.
                let fields = try decoder.decode(frame.payload)
                if header.streamID == stream {
                    if response.status == nil {
                        response.status = fields.first { $0.name == ":status" }?.value
                        response.headers = fields
                    } else {
                        response.trailers = fields
                    }
                    if header.has(HTTP2Flag.endStream) { return response }
                }
            case HTTP2FrameType.data:
                if header.length > 0 {
                    socket.send(HTTP2Frames.windowUpdate(streamID: 0, increment: header.length)
                                + HTTP2Frames.windowUpdate(streamID: header.streamID, increment: header.length))
                }
                if header.streamID == stream {
                    response.body += frame.payload
                    if header.has(HTTP2Flag.endStream) { return response }
                }
            case HTTP2FrameType.windowUpdate where header.streamID == 0:
                connectionCredit += Int(UInt32(bytes: frame.payload[0..<4]))
            case HTTP2FrameType.rstStream:
                resets[header.streamID] = UInt32(bytes: frame.payload[0..<4])
                if header.streamID == stream { return response }
            case HTTP2FrameType.goaway:
                throw ConnectionEnded(description: "GOAWAY, error \(UInt32(bytes: frame.payload[4..<8]))")
            default:
                break
            }
        }
    }

    /// Reads the frames sent our way (RST_STREAM, WINDOW_UPDATE after a response) until `done`
    /// holds, or nothing has come for the receive timeout (10 s): awaiting what must come, not
    /// a quiet moment, which a loaded machine can produce before it has.
    package func drain(until done: (TestH2Connection) -> Bool) {
        while !done(self), let frame = try? nextFrame() {
            if frame.header.type == HTTP2FrameType.windowUpdate && frame.header.streamID == 0 {
                connectionCredit += Int(UInt32(bytes: frame.payload[0..<4]))
            } else if frame.header.type == HTTP2FrameType.rstStream {
                resets[frame.header.streamID] = UInt32(bytes: frame.payload[0..<4])
            }
        }
    }

    private func nextFrame() throws -> TestFrame {
        while true {
            if unread.count >= 9 {
                let length = Int(unread[0]) << 16 | Int(unread[1]) << 8 | Int(unread[2])
                if unread.count >= 9 + length {
                    let frame = TestFrame.split(Array(unread[..<(9 + length)]))[0]
                    unread.removeFirst(9 + length)
                    return frame
                }
            }
            let more = socket.receiveSome()
            guard !more.isEmpty else { throw ConnectionEnded(description: "connection closed or timed out") }
            unread += more
        }
    }
}
