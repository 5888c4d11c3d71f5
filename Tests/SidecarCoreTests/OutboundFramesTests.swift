import NIOCore
import Testing
@testable import SidecarMux

/// The buffers a mux send hands to TLS: nghttp2's own bytes and small payloads gathered, large
/// payloads passed on as the stream's own slices, everything in order.
@Suite struct OutboundFramesTests {
    static func bytes(_ count: Int, from start: UInt8) -> ByteBuffer {
        ByteBuffer(bytes: (0..<count).map { start &+ UInt8(truncatingIfNeeded: $0) })
    }

    static func buffers(_ frames: OutboundFrames) -> [ByteBuffer] {
        var all: [ByteBuffer] = []
        frames.forEach { all.append($0) }
        return all
    }

    static func write(_ frames: inout OutboundFrames, _ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { frames.write($0) }
    }

    @Test("headers and small payloads are gathered into one buffer")
    func gathered() {
        var frames = OutboundFrames(allocator: ByteBufferAllocator())
        #expect(frames.isEmpty)
        Self.write(&frames, Self.bytes(9, from: 0))
        var payload = Self.bytes(100, from: 9)
        frames.append(payload: &payload)
        frames.writeZeros(3)
        frames.writeInteger(7)
        #expect(payload.readableBytes == 0)
        #expect(frames.byteCount == 113)
        let buffers = Self.buffers(frames)
        #expect(buffers.map(\.readableBytes) == [113])
        #expect(Array(buffers[0].readableBytesView) == Array(Self.bytes(109, from: 0).readableBytesView) + [0, 0, 0, 7])
        #expect(OutboundFrames(allocator: ByteBufferAllocator()).isEmpty)
        #expect(Self.buffers(OutboundFrames(allocator: ByteBufferAllocator())).isEmpty)
    }

    @Test("a payload of a record or more stays the stream's buffer, uncopied, between the bytes around it")
    func sliced() {
        var frames = OutboundFrames(allocator: ByteBufferAllocator())
        let large = Self.bytes(64 * 1024, from: 9)
        let exact = Self.bytes(OutboundFrames.sliceThreshold, from: 1)
        Self.write(&frames, Self.bytes(9, from: 0))
        var payload = large
        frames.append(payload: &payload)
        Self.write(&frames, Self.bytes(9, from: 5))
        var second = exact
        frames.append(payload: &second)
        var small = Self.bytes(OutboundFrames.sliceThreshold - 1, from: 2)
        frames.append(payload: &small)
        var empty = ByteBuffer()
        frames.append(payload: &empty)
        let buffers = Self.buffers(frames)
        #expect(frames.byteCount == buffers.reduce(0) { $0 + $1.readableBytes })
        #expect(buffers.map(\.readableBytes) == [9, 64 * 1024, 9, OutboundFrames.sliceThreshold, OutboundFrames.sliceThreshold - 1])
        // The same memory as the stream's buffer: no copy was made.
        let base = { (buffer: ByteBuffer) in buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }
        #expect(base(buffers[1]) == base(large))
        #expect(base(buffers[3]) == base(exact))
        let joined = buffers.flatMap { Array($0.readableBytesView) }
        let expected = [Self.bytes(9, from: 0), large, Self.bytes(9, from: 5), exact, Self.bytes(OutboundFrames.sliceThreshold - 1, from: 2)]
            .flatMap { Array($0.readableBytesView) }
        #expect(joined == expected)
    }
}
