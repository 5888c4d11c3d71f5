import Testing
import TestFixtures
@testable import SidecarCore

// The pure pieces under the HTTP/2 L7 filter: frame headers, the frame scanner, the frames
// the filter writes, the service-side splicer, and the HPACK codec around nghttp2.

/// Feeds `bytes` to `scan` in pieces of the given sizes (cycled), as reads would deliver them.
private func chunks(_ bytes: [UInt8], sizes: [Int]) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var offset = 0
    var index = 0
    while offset < bytes.count {
        let size = max(1, sizes[index % sizes.count])
        out.append(Array(bytes[offset..<min(offset + size, bytes.count)]))
        offset += size
        index += 1
    }
    return out
}

private let sampleStream: [UInt8] =
    HTTP2Frames.frame(type: HTTP2FrameType.settings, streamID: 0, payload: [0, 4, 0, 1, 0, 0])
    + HTTP2Frames.frame(type: HTTP2FrameType.settings, flags: HTTP2Flag.ack, streamID: 0)
    + HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: 5, streamID: 1, payload: Array(repeating: 0x82, count: 30))
    + HTTP2Frames.frame(type: HTTP2FrameType.data, flags: 1, streamID: 1, payload: Array(0..<200).map { UInt8($0 & 0xff) })
    + HTTP2Frames.frame(type: 0xfa, streamID: 7, payload: [1, 2, 3])
    + HTTP2Frames.windowUpdate(streamID: 0, increment: 65535)

@Suite("HTTP/2 framing")
struct HTTP2FramingTests {
    @Test("A frame header survives a round trip; the reserved bit is ignored", arguments: [
        HTTP2FrameHeader(length: 0, type: 4, flags: 1, streamID: 0),
        HTTP2FrameHeader(length: 16384, type: 0, flags: 9, streamID: 1),
        HTTP2FrameHeader(length: HTTP2FrameHeader.maxLength, type: 0xff, flags: 0xff, streamID: 0x7fff_ffff),
    ])
    func headerRoundTrip(_ header: HTTP2FrameHeader) {
        #expect(HTTP2FrameHeader(header.bytes) == header)
        var reserved = header.bytes
        reserved[5] |= 0x80
        #expect(HTTP2FrameHeader(reserved).streamID == header.streamID)
    }

    @Test("The scanner finds the same frames however the bytes are cut", arguments: [[1], [2, 7], [9], [10, 1], [64], [1000]])
    func scannerChunking(_ sizes: [Int]) {
        var scanner = HTTP2FrameScanner()
        var headers: [HTTP2FrameHeader] = []
        var payloads: [[UInt8]] = []
        var boundaries = 0
        var current: [UInt8] = []
        for chunk in chunks(sampleStream, sizes: sizes) {
            chunk.withUnsafeBytes { input in
                scanner.scan(input) { event in
                    switch event {
                    case .header(let header): headers.append(header)
                    case .payload(let range): current += input[range]
                    case .frameEnd(let end):
                        #expect(end <= input.count)
                        payloads.append(current)
                        current = []
                        boundaries += 1
                    }
                }
            }
        }
        let expected = TestFrame.split(sampleStream)
        #expect(headers == expected.map(\.header))
        #expect(payloads == expected.map(\.payload))
        #expect(boundaries == expected.count)
        #expect(scanner.atFrameBoundary)
    }

    @Test("The scanner knows when it is between frames")
    func scannerBoundary() {
        var scanner = HTTP2FrameScanner()
        let frame = HTTP2Frames.frame(type: HTTP2FrameType.ping, streamID: 0, payload: Array(repeating: 1, count: 8))
        frame[..<4].withUnsafeBytes { scanner.scan($0) { _ in } }
        #expect(!scanner.atFrameBoundary, "inside a header")
        frame[4..<12].withUnsafeBytes { scanner.scan($0) { _ in } }
        #expect(!scanner.atFrameBoundary, "inside a payload")
        frame[12...].withUnsafeBytes { scanner.scan($0) { _ in } }
        #expect(scanner.atFrameBoundary)
    }

    @Test("Frames the filter writes")
    func writtenFrames() {
        #expect(HTTP2Frames.windowUpdate(streamID: 3, increment: 70000) == [0, 0, 4, 8, 0, 0, 0, 0, 3, 0, 1, 0x11, 0x70])
        #expect(HTTP2Frames.rstStream(streamID: 5, error: .noError) == [0, 0, 4, 3, 0, 0, 0, 0, 5, 0, 0, 0, 0])
        let goaway = TestFrame.split(HTTP2Frames.goaway(lastStreamID: 9, error: .compressionError, debug: "bad"))
        #expect(goaway.count == 1)
        #expect(goaway[0].header == HTTP2FrameHeader(length: 11, type: HTTP2FrameType.goaway, flags: 0, streamID: 0))
        #expect(goaway[0].payload == [0, 0, 0, 9, 0, 0, 0, 9] + Array("bad".utf8))
    }

    @Test("A large header block becomes HEADERS plus CONTINUATION frames no larger than 16 KiB", arguments: [
        (0, false), (16379, true), (16380, true), (16381, true), (16384, false), (16385, false), (40000, true), (49152, false),
    ])
    func headerBlockSplitting(_ size: Int, _ withPriority: Bool) {
        let block = (0..<size).map { UInt8($0 % 251) }
        let priority: [UInt8]? = withPriority ? [0x80, 0, 0, 1, 15] : nil
        let frames = TestFrame.split(HTTP2Frames.headerBlock(streamID: 7, endStream: true, priority: priority, block: block))
        #expect(frames.allSatisfy { $0.header.length <= 16384 && $0.header.streamID == 7 })
        #expect(frames[0].header.type == HTTP2FrameType.headers)
        #expect(frames[0].header.has(HTTP2Flag.endStream))
        #expect(frames[0].header.has(HTTP2Flag.priority) == withPriority)
        #expect(frames.dropFirst().allSatisfy { $0.header.type == HTTP2FrameType.continuation && $0.header.flags & ~HTTP2Flag.endHeaders == 0 })
        #expect(frames.dropLast().allSatisfy { !$0.header.has(HTTP2Flag.endHeaders) })
        #expect(frames.last!.header.has(HTTP2Flag.endHeaders))
        let joined = frames.flatMap(\.payload)
        #expect(joined == (priority ?? []) + block)
    }

    @Test("SETTINGS payloads", arguments: [
        ([], [(UInt16, UInt32)]()),
        ([0, 1, 0, 0, 0x20, 0], [(1, 8192)]),
        ([0, 4, 0, 1, 0, 0, 0, 5, 0, 0, 0x40, 0], [(4, 65536), (5, 16384)]),
    ] as [([UInt8], [(UInt16, UInt32)])])
    func settingsPayload(_ payload: [UInt8], _ expected: [(UInt16, UInt32)]) {
        let parsed = HTTP2Frames.settings(payload)
        #expect(parsed?.map(\.id) == expected.map(\.0))
        #expect(parsed?.map(\.value) == expected.map(\.1))
    }

    @Test("A SETTINGS payload that is not a multiple of 6 bytes is refused", arguments: [1, 5, 7, 13])
    func settingsBadLength(_ length: Int) {
        #expect(HTTP2Frames.settings(Array(repeating: 0, count: length)) == nil)
    }
}

@Suite("HTTP/2 service-side splicer")
struct HTTP2ResponseSplicerTests {
    private func run(_ splicer: inout HTTP2ResponseSplicer, _ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { materialize(splicer.pass($0).pieces, input: bytes) }
    }

    /// A splicer that has passed the service's SETTINGS (its connection preface).
    private func started() -> HTTP2ResponseSplicer {
        var splicer = HTTP2ResponseSplicer()
        _ = run(&splicer, TestH2Client.settings())
        return splicer
    }

    @Test("The service's bytes pass unchanged, however they are cut", arguments: [[1], [3, 11], [9], [100000]])
    func passThrough(_ sizes: [Int]) {
        var splicer = HTTP2ResponseSplicer()
        let out = chunks(sampleStream, sizes: sizes).flatMap { run(&splicer, $0) }
        #expect(out == sampleStream)
    }

    @Test("Between frames our frame goes out at once; inside one it waits for the frame's end")
    func spliceTiming() {
        var splicer = started()
        let ours = HTTP2Frames.rstStream(streamID: 3, error: .noError)
        #expect(splicer.splice(ours) == ours)
        let data = TestH2Client.data(1, Array(repeating: 7, count: 100))
        var out = run(&splicer, Array(data[..<50]))
        #expect(splicer.splice(ours) == nil)
        #expect(splicer.queuedBytes == ours.count)
        out += run(&splicer, Array(data[50...]) + HTTP2Frames.windowUpdate(streamID: 0, increment: 1))
        #expect(out == data + ours + HTTP2Frames.windowUpdate(streamID: 0, increment: 1))
        #expect(splicer.queuedBytes == 0)
    }

    @Test("Never inside a header block: our frames wait for the CONTINUATION that ends it", arguments: [
        HTTP2FrameType.headers, HTTP2FrameType.pushPromise,
    ])
    func notInsideHeaderBlock(_ type: UInt8) {
        var splicer = started()
        let first = HTTP2Frames.frame(type: type, streamID: 1, payload: [1, 2, 3, 4])
        let middle = HTTP2Frames.frame(type: HTTP2FrameType.continuation, streamID: 1, payload: [5])
        let last = HTTP2Frames.frame(type: HTTP2FrameType.continuation, flags: HTTP2Flag.endHeaders, streamID: 1, payload: [6])
        var out = run(&splicer, first)
        let ours = HTTP2Frames.windowUpdate(streamID: 0, increment: 10)
        #expect(splicer.splice(ours) == nil)
        out += run(&splicer, middle)
        #expect(splicer.queuedBytes == ours.count)
        out += run(&splicer, last)
        #expect(out == first + middle + last + ours)
    }

    @Test("Several queued frames go out in order at the first boundary")
    func queuedOrder() {
        var splicer = started()
        let data = TestH2Client.data(1, [1, 2, 3])
        var out = run(&splicer, Array(data[..<4]))
        let frames = (1...3).map { HTTP2Frames.rstStream(streamID: UInt32($0 * 2 + 1), error: .noError) }
        for frame in frames { #expect(splicer.splice(frame) == nil) }
        out += run(&splicer, Array(data[4...]) + data)
        #expect(out == data + frames.flatMap { $0 } + data)
    }

    @Test("Nothing of ours before the service's SETTINGS has passed whole", arguments: [0, 5, 9, 14])
    func notBeforeServicePreface(_ cut: Int) {
        var splicer = HTTP2ResponseSplicer()
        let settings = TestH2Client.settings([(3, 100)])
        var out = run(&splicer, Array(settings[..<cut]))
        let ours = HTTP2Frames.rstStream(streamID: 1, error: .noError)
        #expect(splicer.splice(ours) == nil)
        out += run(&splicer, Array(settings[cut...]))
        #expect(out == settings + ours)
    }

    @Test("The last frame: after an empty SETTINGS if the service sent nothing, at a boundary, or not at all mid-frame")
    func lastFrame() {
        let goaway = HTTP2Frames.goaway(lastStreamID: 1, error: .protocolError, debug: "x")
        var fresh = HTTP2ResponseSplicer()
        #expect(fresh.spliceLast(goaway) == HTTP2Frames.frame(type: HTTP2FrameType.settings, streamID: 0) + goaway)
        #expect(fresh.closed)
        #expect(run(&fresh, TestH2Client.settings()).isEmpty, "nothing of the service passes after it")

        var between = started()
        #expect(between.spliceLast(goaway) == goaway)

        var midFrame = started()
        _ = run(&midFrame, Array(TestH2Client.data(1, [1, 2, 3])[..<10]))
        #expect(midFrame.spliceLast(goaway) == nil)
        #expect(midFrame.closed)
    }

    @Test("What the request side must know: HEADER_TABLE_SIZE and resets")
    func observations() {
        var splicer = HTTP2ResponseSplicer()
        let bytes = TestH2Client.settings([(1, 8192), (3, 100)]) + TestH2Client.settings([(4, 1000)])
            + TestH2Client.settingsAck + HTTP2Frames.rstStream(streamID: 5, error: .internalError)
        var seen: [HTTP2ResponseSplicer.Observation] = []
        for byte in bytes { [byte].withUnsafeBytes { seen += splicer.pass($0).observations } }
        #expect(seen == [.settings(headerTableSize: 8192), .settings(headerTableSize: nil), .reset(streamID: 5)])
    }
}

@Suite("HPACK codec")
struct HPACKCodecTests {
    let fields = [HTTP2HeaderField(":method", "PUT"), HTTP2HeaderField(":path", "/repository/snap-1?x=1"),
                  HTTP2HeaderField("x-backup-job", "nightly-42"), HTTP2HeaderField("cookie", "a=1"),
                  HTTP2HeaderField("cookie", "b=2"), HTTP2HeaderField("x-unicode", "café ☕")]

    @Test("Our blocks decode with a fresh decoder and are the same every time (no table state)")
    func stateless() throws {
        let encoder = StatelessHeaderEncoder()
        let first = encoder.encode(fields)
        let second = encoder.encode(fields)
        #expect(first == second)
        #expect(try HeaderBlockDecoder().decode(first) == fields)
        // A decoder whose table is full of other entries reads it the same.
        let busy = HeaderBlockDecoder()
        _ = try busy.decode(TestH2Client().block([("x-a", "1"), ("x-b", "2"), (":path", "/elsewhere")]))
        #expect(try busy.decode(second) == fields)
    }

    @Test("Our blocks never start with a dynamic table size update or add an entry")
    func noTableOperations() {
        let block = StatelessHeaderEncoder().encode(fields)
        // 001xxxxx is a size update and 01xxxxxx an incremental-indexing literal; the first
        // byte of our block is a field representation of one of the stateless kinds.
        #expect(block.first.map { $0 & 0xe0 != 0x20 } == true)
        #expect(block.first.map { $0 & 0xc0 != 0x40 } == true)
    }

    @Test("The decoder follows the client's dynamic table across blocks")
    func dynamicTable() throws {
        let client = TestH2Client()
        let decoder = HeaderBlockDecoder()
        let pairs = fields.map { ($0.name, $0.value) }
        let first = client.block(pairs)
        let second = client.block(pairs)
        #expect(second.count < first.count, "the second block refers to the table")
        #expect(try decoder.decode(first) == fields)
        #expect(try decoder.decode(second) == fields)
    }

    @Test("Fields HTTP/2 forbids, or that are not UTF-8, are refused", arguments: [
        ("X-Upper", "v"), ("bad name", "v"), ("", "v"), (":", "v"), ("x", "a\r\nb"), ("x", " leading"), ("x", "soh\u{1}"),
    ])
    func invalidFields(_ name: String, _ value: String) {
        #expect(throws: HPACKError.self) { try HeaderBlockDecoder().decode(TestH2Client().block([(name, value)])) }
    }

    @Test("Invalid UTF-8 in a value is refused")
    func invalidUTF8() {
        // Literal without indexing, new name "x", value 0xff (no Huffman).
        let block: [UInt8] = [0x00, 0x01, UInt8(ascii: "x"), 0x01, 0xff]
        #expect(throws: HPACKError.invalidValue("x")) { try HeaderBlockDecoder().decode(block) }
    }

    @Test("Garbage and truncated blocks are compression errors", arguments: [
        [0xff, 0xff, 0xff, 0xff, 0xff], [0x80], [0x00, 0x05, 0x61], [0x3f, 0xff, 0xff, 0xff, 0x0f], [0xbf, 0x7f],
    ] as [[UInt8]])
    func garbage(_ block: [UInt8]) {
        #expect {
            try HeaderBlockDecoder().decode(block)
        } throws: { error in
            if case .compression = error as? HPACKError { return true }
            return false
        }
    }

    @Test("A header list over the limit is refused")
    func tooLarge() {
        let big = (0..<70).map { ("x-\($0)", String(repeating: "v", count: 1000)) }
        #expect(throws: HPACKError.tooLarge(HeaderBlockDecoder.maxHeaderListSize)) {
            try HeaderBlockDecoder().decode(TestH2Client().block(big))
        }
    }

    @Test("A larger table is accepted only once allowed")
    func tableSize() throws {
        let client = TestH2Client(tableSize: 8192)
        client.changeTableSize(8192)
        let block = client.block([("x-a", "1")])
        #expect(throws: HPACKError.self) { try HeaderBlockDecoder().decode(block) }
        let decoder = HeaderBlockDecoder()
        decoder.setMaxTableSize(8192)
        #expect(try decoder.decode(block) == [HTTP2HeaderField("x-a", "1")])
    }
}
