import NIOCore
import Testing
@testable import SidecarMux

/// A stream's queue of undelivered data: what it holds for a stalled reader.
@Suite("Mux stream inbound queue")
struct StreamInboundTests {
    static let allocator = ByteBufferAllocator()

    /// `count` bytes as a slice of a 64 KiB buffer, the way TLS hands them over.
    static func slice(_ count: Int, byte: UInt8 = 1) -> ByteBuffer {
        var backing = allocator.buffer(capacity: 64 * 1024)
        backing.writeRepeatingByte(byte, count: 64 * 1024)
        return backing.getSlice(at: 0, length: count)!
    }

    static func drain(_ queue: inout StreamInbound) -> [UInt8] {
        var out: [UInt8] = []
        while var chunk = queue.popFirst() { out += chunk.readBytes(length: chunk.readableBytes)! }
        return out
    }

    @Test("A payload arriving to an empty queue is kept as it came (no copy: the common, delivered-at-once case)",
          arguments: [1, 100, 4095, 4096, 65536])
    func firstKept(count: Int) {
        var queue = StreamInbound()
        let data = Self.slice(count)
        queue.append(data, allocator: Self.allocator)
        #expect(queue.bytes == count)
        #expect(queue.held.chunks == 1)
        #expect(queue.popFirst() == data)
        #expect(queue.isEmpty && queue.bytes == 0)
    }

    @Test("Small payloads queued behind others share our buffers: 10,000 one-byte payloads hold a few 16 KiB buffers, in order")
    func smallShare() {
        var queue = StreamInbound()
        queue.append(Self.slice(4096, byte: 0), allocator: Self.allocator)
        var expected = [UInt8](repeating: 0, count: 4096)
        for index in 0..<10_000 {
            let byte = UInt8(truncatingIfNeeded: index)
            queue.append(Self.slice(1, byte: byte), allocator: Self.allocator)
            expected.append(byte)
        }
        #expect(queue.bytes == 14_096)
        #expect(queue.held.chunks == 1 + 1, "one 16 KiB buffer holds the 10,000")
        #expect(queue.held.storage <= 64 * 1024 + 16 * 1024)
        #expect(Self.drain(&queue) == expected)
    }

    @Test("A large payload ends the shared buffer; small ones after it start another; order and byte counts hold",
          arguments: [[1, 2, 5000, 3, 4], [4095, 4095, 4095, 4095, 4095], [10, 70_000, 10], [4096, 1, 4096, 1]])
    func mixed(sizes: [Int]) {
        var queue = StreamInbound()
        var expected: [UInt8] = []
        for (index, size) in sizes.enumerated() {
            let byte = UInt8(index + 1)
            var data = Self.allocator.buffer(capacity: size)
            data.writeRepeatingByte(byte, count: size)
            queue.append(data, allocator: Self.allocator)
            expected += [UInt8](repeating: byte, count: size)
        }
        #expect(queue.bytes == sizes.reduce(0, +))
        #expect(Self.drain(&queue) == expected)
        #expect(queue.bytes == 0)
    }

    @Test("After the queue empties, the next small payload is kept as it came, not appended to a delivered buffer")
    func sharedEndsWhenEmpty() {
        var queue = StreamInbound()
        queue.append(Self.slice(10), allocator: Self.allocator)
        queue.append(Self.slice(10), allocator: Self.allocator)
        _ = Self.drain(&queue)
        let next = Self.slice(5)
        queue.append(next, allocator: Self.allocator)
        #expect(queue.popFirst() == next)
    }

    @Test("removeAll forgets everything")
    func removeAll() {
        var queue = StreamInbound()
        for _ in 0..<5 { queue.append(Self.slice(3), allocator: Self.allocator) }
        queue.removeAll()
        #expect(queue.isEmpty && queue.bytes == 0 && queue.held.storage == 0)
    }
}
