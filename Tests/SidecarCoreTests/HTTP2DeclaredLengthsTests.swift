import Testing
import TestFixtures
@testable import SidecarCore

/// An allowed HTTP/2 request's DATA must add up to its content-length (RFC 9113 §8.1.1).
@Suite("HTTP/2 declared lengths")
struct HTTP2DeclaredLengthsTests {
    @Test("content-length: one plain number or nothing", arguments: [
        ([], nil as Int?, false), (["5"], 5, false), (["0"], 0, false), (["005"], 5, false),
        (["5", "5"], nil, true), (["+5"], nil, true), (["5, 5"], nil, true), ([""], nil, true), (["-1"], nil, true),
        (["99999999999999999999"], nil, true), (["0x5"], nil, true),
    ])
    func declared(_ values: [String], _ expected: Int?, _ malformed: Bool) {
        let fields = [HTTP2HeaderField(":method", "PUT")] + values.map { HTTP2HeaderField("content-length", $0) }
        do {
            #expect(try HTTP2DeclaredLengths.declared(in: fields) == expected)
            #expect(!malformed)
        } catch {
            #expect(malformed, "\(values): \(error)")
        }
    }

    @Test("DATA is counted against the declared length, stream by stream")
    func counting() {
        var lengths = HTTP2DeclaredLengths()
        lengths.expect(10, on: 1)
        lengths.expect(nil, on: 3)
        #expect(lengths.received(4, endStream: false, on: 1) == nil)
        #expect(lengths.received(1_000, endStream: false, on: 3) == nil, "no declared length, nothing to hold to")
        #expect(lengths.received(6, endStream: true, on: 1) == nil)
        lengths.expect(4, on: 5)
        #expect(lengths.received(5, endStream: false, on: 5)?.contains("more DATA") == true)
        lengths.expect(4, on: 7)
        #expect(lengths.received(3, endStream: true, on: 7)?.contains("1 bytes short") == true)
        lengths.expect(4, on: 9)
        #expect(lengths.received(2, endStream: false, on: 9) == nil)
        #expect(lengths.ended(9)?.contains("2 bytes short") == true, "trailers before the body is complete")
        lengths.expect(4, on: 11)
        lengths.forget(11)
        #expect(lengths.received(100, endStream: true, on: 11) == nil, "a reset stream is forgotten")
    }
}
