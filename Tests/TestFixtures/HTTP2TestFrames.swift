import CNGHTTP2
import Testing
@testable import SidecarCore

/// Builds what an HTTP/2 client sends, with a real (indexing) HPACK encoder, so blocks refer
/// to entries that earlier blocks added, as curl's and every other client's do.
package final class TestH2Client {
    private let deflater: OpaquePointer

    package init(tableSize: Int = 4096) {
        var created: OpaquePointer?
        precondition(nghttp2_hd_deflate_new(&created, tableSize) == 0)
        deflater = created!
    }

    deinit { nghttp2_hd_deflate_del(deflater) }

    /// Lets the encoder use a table as large as the service's acknowledged SETTINGS allow.
    package func changeTableSize(_ size: Int) { precondition(nghttp2_hd_deflate_change_table_size(deflater, size) == 0) }

    /// An HPACK block with incremental indexing (the encoder's default).
    package func block(_ fields: [(String, String)]) -> [UInt8] {
        var storage: [UInt8] = []
        var spans: [(Range<Int>, Range<Int>)] = []
        for (name, value) in fields {
            let nameStart = storage.count
            storage += name.utf8
            let valueStart = storage.count
            storage += value.utf8
            spans.append((nameStart..<valueStart, valueStart..<storage.count))
        }
        storage.append(0) // never empty, so baseAddress exists
        return storage.withUnsafeMutableBufferPointer { bytes in
            let entries = spans.map {
                nghttp2_nv(name: bytes.baseAddress! + $0.0.lowerBound, value: bytes.baseAddress! + $0.1.lowerBound,
                           namelen: $0.0.count, valuelen: $0.1.count, flags: 0)
            }
            var out = [UInt8](repeating: 0, count: nghttp2_hd_deflate_bound(deflater, entries, entries.count))
            let written = out.withUnsafeMutableBufferPointer {
                nghttp2_hd_deflate_hd(deflater, $0.baseAddress, $0.count, entries, entries.count)
            }
            precondition(written >= 0)
            return Array(out[..<written])
        }
    }

    package static let start = HTTP2Frames.clientPreface + settings([(0x3, 100), (0x4, 1 << 20)])

    package static func settings(_ values: [(UInt16, UInt32)] = []) -> [UInt8] {
        HTTP2Frames.frame(type: HTTP2FrameType.settings, streamID: 0,
                          payload: values.flatMap { [UInt8($0.0 >> 8), UInt8($0.0 & 0xff)] + $0.1.bigEndianBytes })
    }

    package static let settingsAck = HTTP2Frames.frame(type: HTTP2FrameType.settings, flags: HTTP2Flag.ack, streamID: 0)

    /// A request's HEADERS frame (END_HEADERS set).
    package func headers(_ stream: UInt32, _ fields: [(String, String)], endStream: Bool = true) -> [UInt8] {
        HTTP2Frames.frame(type: HTTP2FrameType.headers,
                          flags: HTTP2Flag.endHeaders | (endStream ? HTTP2Flag.endStream : 0),
                          streamID: stream, payload: block(fields))
    }

    package func request(_ stream: UInt32, _ method: String, _ path: String, _ extra: [(String, String)] = [],
                 endStream: Bool = true) -> [UInt8] {
        headers(stream, [(":method", method), (":scheme", "http"), (":authority", "storage"), (":path", path)] + extra,
                endStream: endStream)
    }

    package static func data(_ stream: UInt32, _ payload: [UInt8], endStream: Bool = false) -> [UInt8] {
        HTTP2Frames.frame(type: HTTP2FrameType.data, flags: endStream ? HTTP2Flag.endStream : 0, streamID: stream,
                          payload: payload)
    }
}

/// A frame as a test reads it back: split by a loop independent of HTTP2FrameScanner.
package struct TestFrame: Equatable, CustomStringConvertible {
    package var header: HTTP2FrameHeader
    package var payload: [UInt8]

    package var description: String { "type \(header.type) flags \(header.flags) stream \(header.streamID) length \(header.length)" }

    /// With `partial`, a trailing incomplete frame (a reply cut short) is ignored; otherwise
    /// it is a test failure.
    package static func split(_ bytes: [UInt8], partial: Bool = false) -> [TestFrame] {
        var frames: [TestFrame] = []
        var offset = 0
        while offset + 9 <= bytes.count {
            let length = Int(bytes[offset]) << 16 | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
            let stream = (UInt32(bytes[offset + 5]) << 24 | UInt32(bytes[offset + 6]) << 16
                | UInt32(bytes[offset + 7]) << 8 | UInt32(bytes[offset + 8])) & 0x7fff_ffff
            guard offset + 9 + length <= bytes.count else { break }
            frames.append(TestFrame(header: HTTP2FrameHeader(length: length, type: bytes[offset + 3], flags: bytes[offset + 4],
                                                             streamID: stream),
                                    payload: Array(bytes[(offset + 9)..<(offset + 9 + length)])))
            offset += 9 + length
        }
        if offset != bytes.count && !partial { Issue.record("\(bytes.count - offset) bytes of a partial frame at the end") }
        return frames
    }
}

/// The bytes `pieces` stand for, given the input they refer to.
package func materialize(_ pieces: [HTTP2Piece], input: [UInt8]) -> [UInt8] {
    pieces.flatMap { piece -> [UInt8] in
        switch piece {
        case .input(let range): return Array(input[range])
        case .bytes(let bytes): return bytes
        }
    }
}

/// Decodes every header block in `frames` (HEADERS + CONTINUATION) with one fresh decoder,
/// as the receiving side would.
package func headerBlocks(_ frames: [TestFrame]) throws -> [(stream: UInt32, fields: [HTTP2HeaderField], endStream: Bool)] {
    let decoder = HeaderBlockDecoder()
    var blocks: [(UInt32, [HTTP2HeaderField], Bool)] = []
    var pending: (UInt32, [UInt8], Bool)?
    for frame in frames where frame.header.type == HTTP2FrameType.headers || frame.header.type == HTTP2FrameType.continuation {
        var payload = frame.payload[...]
        if frame.header.type == HTTP2FrameType.headers {
            if frame.header.has(HTTP2Flag.padded) {
                let padding = Int(payload.removeFirst())
                payload = payload.dropLast(padding)
            }
            if frame.header.has(HTTP2Flag.priority) { payload = payload.dropFirst(5) }
            pending = (frame.header.streamID, [], frame.header.has(HTTP2Flag.endStream))
        }
        pending!.1 += payload
        if frame.header.has(HTTP2Flag.endHeaders) {
            blocks.append((pending!.0, try decoder.decode(pending!.1), pending!.2))
            pending = nil
        }
    }
    return blocks
}
