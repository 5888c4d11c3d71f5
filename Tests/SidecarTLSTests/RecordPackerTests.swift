import NIOCore
import Testing
@testable import SidecarTLS

/// How a flush's writes are cut into TLS records before encryption: every byte once, in order,
/// only the last piece short, and copies only where a record spans two writes.
@Suite struct RecordPackerTests {
    static let record = RecordPacker.recordSize

    /// A fixed-seed generator (SplitMix64): the same cases on every run.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// 2 MiB of a byte counter modulo 251 (a prime: a run that is shifted or repeated does not
    /// line up), from which the writes are cut as consecutive slices.
    static let pattern = ByteBuffer(bytes: (0..<(2 << 20)).map { UInt8($0 % 251) })

    /// Writes of these sizes: consecutive slices of `pattern`, so any loss or reordering shows.
    static func writes(_ sizes: [Int]) -> [ByteBuffer] {
        var offset = 0
        return sizes.map { size in
            defer { offset += size }
            return pattern.getSlice(at: offset, length: size)!
        }
    }

    static func pack(_ writes: [ByteBuffer]) -> (pieces: [ByteBuffer], copied: Int) {
        var packer = RecordPacker(allocator: ByteBufferAllocator())
        var pieces: [ByteBuffer] = []
        for write in writes { packer.add(write) { pieces.append($0) } }
        packer.finish { pieces.append($0) }
        return (pieces, packer.copiedBytes)
    }

    /// Whether `piece` is the writes' own memory (a slice of `pattern`), not a copy.
    static func isUncopied(_ piece: ByteBuffer) -> Bool {
        let start = { (buffer: ByteBuffer) in buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }
        let base = start(pattern), address = start(piece)
        return address >= base && address < base + UInt(pattern.readableBytes)
    }

    static func joined(_ buffers: [ByteBuffer]) -> ByteBuffer {
        var all = ByteBuffer()
        for var buffer in buffers { all.writeBuffer(&buffer) }
        return all
    }

    /// The properties every packing must have.
    static func check(_ sizes: [Int], sourceLocation: SourceLocation = #_sourceLocation) -> (pieces: [ByteBuffer], copied: Int) {
        let input = writes(sizes)
        let (pieces, copied) = pack(input)
        #expect(joined(pieces) == pattern.getSlice(at: 0, length: sizes.reduce(0, +))!, "bytes lost or reordered for \(sizes)",
                sourceLocation: sourceLocation)
        #expect(pieces.allSatisfy { $0.readableBytes > 0 }, sourceLocation: sourceLocation)
        #expect(pieces.dropLast().allSatisfy { $0.readableBytes % record == 0 },
                "a short record before the last for \(sizes): \(pieces.map(\.readableBytes))", sourceLocation: sourceLocation)
        // The copy count is what the memory says: every piece not in the writes' memory was copied.
        #expect(pieces.filter { !isUncopied($0) }.reduce(0) { $0 + $1.readableBytes } == copied,
                "copied \(copied) for \(sizes)", sourceLocation: sourceLocation)
        return (pieces, copied)
    }

    @Test("one write of any size is never copied, and only its tail is short")
    func singleWrite() {
        for size in [1, 9, 1000, Self.record - 1, Self.record, Self.record + 1, 3 * Self.record, 64 * 1024 + 9, 1 << 20, (1 << 20) + 17] {
            let (pieces, copied) = Self.check([size])
            #expect(copied == 0, "size \(size)")
            #expect(pieces.count == (size % Self.record == 0 || size < Self.record ? 1 : 2), "size \(size)")
        }
    }

    @Test("small writes are gathered into full records")
    func smallWrites() {
        let (pieces, copied) = Self.check(Array(repeating: 256, count: 64))
        #expect(pieces.map(\.readableBytes) == [Self.record])
        #expect(copied == Self.record)
        let (three, _) = Self.check(Array(repeating: 1000, count: 40))
        #expect(three.map(\.readableBytes) == [Self.record, Self.record, 40_000 - 2 * Self.record])
    }

    @Test("empty writes change nothing")
    func emptyWrites() {
        let (none, copied) = Self.check([0, 0])
        #expect(none.isEmpty && copied == 0)
        let (pieces, _) = Self.check([0, 5, 0, Self.record, 0])
        #expect(pieces.map(\.readableBytes) == [Self.record, 5])
    }

    @Test("mux DATA frames (9-byte header, 64 KiB payload) cost about one record of copying each, not the frame")
    func muxFrames() {
        let frames = 16
        let sizes = (0..<frames).flatMap { _ in [9, 64 * 1024] }
        let (pieces, copied) = Self.check(sizes)
        let total = frames * (9 + 64 * 1024)
        #expect(copied <= frames * (Self.record + 2 * 9), "copied \(copied) of \(total)")
        #expect(pieces.reduce(0) { $0 + $1.readableBytes } == total)
        // Full records throughout: as few records as the bytes allow.
        let records = pieces.reduce(0) { $0 + ($1.readableBytes + Self.record - 1) / Self.record }
        #expect(records == (total + Self.record - 1) / Self.record)
    }

    @Test("2,000 random flushes: every byte once, in order; only the last piece short; copies bounded")
    func randomFlushes() {
        var generator = SeededGenerator(state: 20_261_207)
        for _ in 0..<2_000 {
            let count = Int.random(in: 1...12, using: &generator)
            let sizes = (0..<count).map { _ -> Int in
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: return Int.random(in: 0...40, using: &generator)
                case 1: return Int.random(in: 0...(2 * Self.record), using: &generator)
                case 2: return Self.record * Int.random(in: 1...4, using: &generator) + Int.random(in: -2...2, using: &generator)
                default: return Int.random(in: 0...(100 * 1024), using: &generator)
                }
            }.map { max(0, $0) }
            let (_, copied) = Self.check(sizes)
            // A copy happens only to assemble a record that spans writes: of each write, at most
            // its head (completing the record before it) and its tail (starting the next).
            #expect(copied <= sizes.reduce(0) { $0 + min($1, 2 * (Self.record - 1)) }, "\(sizes): copied \(copied)")
        }
    }
}
