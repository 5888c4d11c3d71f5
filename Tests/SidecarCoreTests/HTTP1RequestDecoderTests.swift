import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing
import TestSupport
@testable import SidecarCore
@testable import SidecarModel

/// How chunk data becomes body parts: a run of small chunks is one part, so a peer's one-byte
/// chunks cannot make one queued event per byte.
@Suite("HTTP/1.1 body parts")
struct HTTP1BodyPartTests {
    typealias Piece = ChunkedBodyReader.BodyPiece
    static let big = ChunkedBodyReader.sliceMinimum

    @Test("small neighbours are gathered, large ranges stay slices, a lone small range is a slice")
    func table() {
        let cases: [([Range<Int>], [Piece])] = [
            ([], []),
            ([0..<0], []),
            ([3..<4], [.slice(3..<4)]),
            ([3..<4, 9..<10], [.gathered([3..<4, 9..<10])]),
            ([0..<Self.big], [.slice(0..<Self.big)]),
            ([0..<(Self.big - 1), Self.big..<(Self.big + 1)], [.gathered([0..<(Self.big - 1), Self.big..<(Self.big + 1)])]),
            ([0..<1, 5..<(5 + Self.big), 9000..<9001], [.slice(0..<1), .slice(5..<(5 + Self.big)), .slice(9000..<9001)]),
            ([0..<1, 6..<7, 12..<(12 + Self.big), 9000..<9001, 9010..<9011, 9020..<9020],
             [.gathered([0..<1, 6..<7]), .slice(12..<(12 + Self.big)), .gathered([9000..<9001, 9010..<9011])]),
        ]
        for (ranges, expected) in cases {
            #expect(ChunkedBodyReader.bodyPieces(ranges) == expected, "\(ranges)")
        }
    }

    @Test("random ranges: every range once, in order; at most two parts per large range, plus one")
    func random() {
        var random = SplitMix64(seed: 0xc4_0bb1e5)
        for _ in 0..<2000 {
            var ranges: [Range<Int>] = []
            var at = 0
            for _ in 0..<Int(random.next() % 40) {
                at += Int(random.next() % 6) // a chunk's size line between ranges
                let sizes = [0, 1, 2, 17, Self.big - 1, Self.big, Self.big + 1, 20_000]
                let size = sizes[Int(random.next() % UInt64(sizes.count))]
                ranges.append(at..<(at + size))
                at += size
            }
            let pieces = ChunkedBodyReader.bodyPieces(ranges)
            let flattened = pieces.flatMap { piece -> [Range<Int>] in
                switch piece {
                case .slice(let range): return [range]
                case .gathered(let run):
                    #expect(run.count >= 2 && run.allSatisfy { $0.count < Self.big && !$0.isEmpty })
                    return run
                }
            }
            #expect(flattened == ranges.filter { !$0.isEmpty })
            let large = ranges.filter { $0.count >= Self.big }.count
            #expect(pieces.count <= 2 * large + 1)
        }
    }
}

/// The decoder of the L7 filter in a channel, fed the wire bytes of chunked requests.
@Suite("HTTP/1.1 request decoder")
struct HTTP1RequestDecoderTests {
    /// A channel with the decoder, and the request parts it has passed on.
    static func decoder() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let decoder = HTTP1RequestDecoder(log: HTTP1RequestLog(), paths: PathNormalization(), underscores: .allow)
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
        return channel
    }

    static func chunked(_ body: [UInt8], sizes: (Int) -> Int) -> [UInt8] {
        var wire = Array("POST /r/x HTTP/1.1\r\nHost: storage\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        var offset = 0, index = 0
        while offset < body.count {
            let size = min(sizes(index), body.count - offset)
            wire += Array((String(size, radix: 16) + "\r\n").utf8) + body[offset..<(offset + size)] + Array("\r\n".utf8)
            offset += size
            index += 1
        }
        return wire + Array("0\r\n\r\nGET /next HTTP/1.1\r\nHost: storage\r\n\r\n".utf8)
    }

    /// Feeds `wire` in pieces of the given sizes; returns the first request's body, the body
    /// parts each feed produced, and whether the request ended and the next one's head came.
    static func feed(_ wire: [UInt8], cuts: [Int]) throws -> (body: [UInt8], partsPerFeed: [(bytes: Int, parts: Int)], complete: Bool) {
        let channel = try decoder()
        var body: [UInt8] = [], partsPerFeed: [(Int, Int)] = [], heads: [String] = [], ends = 0
        var offset = 0, cut = 0
        while offset < wire.count {
            let size = min(cuts[cut % cuts.count], wire.count - offset)
            cut += 1
            try channel.writeInbound(ByteBuffer(bytes: wire[offset..<(offset + size)]))
            offset += size
            var parts = 0
            while let part = try channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let head): heads.append(head.uri)
                case .body(let buffer):
                    parts += 1
                    #expect(ends == 0, "body after the end")
                    body += buffer.readableBytesView
                case .end: ends += 1
                }
            }
            partsPerFeed.append((size, parts))
        }
        _ = try channel.finish()
        return (body, partsPerFeed, heads == ["/r/x", "/next"] && ends == 2)
    }

    @Test("10,000 one-byte chunks in one read are one body part")
    func oneByteChunks() throws {
        let body = (0..<10_000).map { UInt8($0 % 251) }
        let wire = Self.chunked(body, sizes: { _ in 1 })
        let result = try Self.feed(wire, cuts: [wire.count])
        #expect(result.complete)
        #expect(result.body == body)
        #expect(result.partsPerFeed.map(\.parts) == [1])
    }

    @Test("random chunk sizes and read cuts: the body intact, parts bounded by the read's size")
    func randomChunks() throws {
        var random = SplitMix64(seed: 0xb0d7_9a47)
        for _ in 0..<60 {
            let body = (0..<Int(20_000 + random.next() % 60_000)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            let sizes = (0..<64).map { _ in [1, 3, 100, 4095, 4096, 9000][Int(random.next() % 6)] }
            let wire = Self.chunked(body, sizes: { sizes[$0 % sizes.count] })
            let cuts = (0..<16).map { _ in [1, 7, 1000, 16_384, 65_536][Int(random.next() % 5)] }
            let result = try Self.feed(wire, cuts: cuts)
            #expect(result.complete)
            #expect(result.body == body)
            for (bytes, parts) in result.partsPerFeed {
                #expect(parts <= 2 * (bytes / ChunkedBodyReader.sliceMinimum) + 1, "\(parts) parts from \(bytes) bytes")
            }
        }
    }
}
