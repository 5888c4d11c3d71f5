import NIOCore
import NIOEmbedded
import Testing
@testable import SidecarMux

/// A stream's queue of data written and not yet taken as DATA frames: what it holds while the
/// peer grants no window, and that it hands out every byte, in order, with every promise.
@Suite("Mux stream outbound queue")
struct StreamOutboundTests {
    static let allocator = ByteBufferAllocator()

    /// `count` bytes as a slice of a 1 KiB receive buffer (or larger), as NIO reads them.
    static func read(_ count: Int, byte: UInt8 = 1) -> ByteBuffer {
        var backing = allocator.buffer(capacity: max(1024, count))
        backing.writeRepeatingByte(byte, count: count)
        return backing.getSlice(at: 0, length: count)!
    }

    /// Takes `count` bytes (all, by default) and returns them with the promises finished.
    static func take(_ queue: inout StreamOutbound, _ count: Int? = nil) -> (bytes: [UInt8], finished: [EventLoopPromise<Void>]) {
        var frames = OutboundFrames(allocator: allocator)
        var finished: [EventLoopPromise<Void>] = []
        queue.take(count ?? queue.bytes, into: &frames, finished: &finished)
        var bytes: [UInt8] = []
        frames.forEach { buffer in bytes += buffer.getBytes(at: buffer.readerIndex, length: buffer.readableBytes)! }
        return (bytes, finished)
    }

    @Test("A write to an empty queue is kept as it came, uncopied", arguments: [1, 100, 4095, 4096, 65536])
    func firstKept(count: Int) {
        var queue = StreamOutbound()
        let data = Self.read(count)
        queue.append(data, promise: nil, allocator: Self.allocator)
        #expect(queue.bytes == count)
        #expect(queue.held.chunks == 1 && queue.held.storage == data.storageCapacity, "the caller's buffer itself")
        #expect(Self.take(&queue).bytes == Array(repeating: 1, count: count))
        #expect(queue.bytes == 0 && queue.held.chunks == 0)
    }

    @Test("100,000 one-byte writes behind a first: a few 16 KiB buffers, not a receive buffer each; in order")
    func smallShare() {
        var queue = StreamOutbound()
        queue.append(Self.read(2000, byte: 0), promise: nil, allocator: Self.allocator)
        var expected = [UInt8](repeating: 0, count: 2000)
        for index in 0..<100_000 {
            let byte = UInt8(truncatingIfNeeded: index)
            queue.append(Self.read(1, byte: byte), promise: nil, allocator: Self.allocator)
            expected.append(byte)
        }
        #expect(queue.bytes == 102_000)
        #expect(queue.held.chunks <= 8, "\(queue.held)")
        #expect(queue.held.storage < 130 * 1024, "\(queue.held)")
        #expect(Self.take(&queue).bytes == expected)
    }

    @Test("A window opened a few bytes at a time: the shared buffer does not keep what was taken from it")
    func partialTakesStayBounded() {
        var queue = StreamOutbound()
        queue.append(Self.read(10), promise: nil, allocator: Self.allocator)
        var expected = [UInt8](repeating: 1, count: 10)
        var out: [UInt8] = []
        for index in 0..<100_000 {
            let byte = UInt8(truncatingIfNeeded: index)
            queue.append(Self.read(1, byte: byte), promise: nil, allocator: Self.allocator)
            expected.append(byte)
            out += Self.take(&queue, 1).bytes // the queue never empties
            #expect(queue.held.storage <= 3 * SharedTailChunks.sharedCapacity, "after \(index): \(queue.held)")
            if queue.held.storage > 3 * SharedTailChunks.sharedCapacity { break }
        }
        out += Self.take(&queue).bytes
        #expect(out == expected)
    }

    @Test("Writes of 4 KiB or more that fill a quarter of their buffer or more keep their own entries, uncopied",
          arguments: [(4096, 4096), (10_000, 16384), (65536, 65536), (70_000, 262_144)])
    func largeKept(count: Int, capacity: Int) {
        var queue = StreamOutbound()
        queue.append(Self.read(10), promise: nil, allocator: Self.allocator)
        var backing = Self.allocator.buffer(capacity: capacity)
        backing.writeRepeatingByte(3, count: count)
        queue.append(backing, promise: nil, allocator: Self.allocator)
        #expect(queue.held.chunks == 2)
        #expect(queue.held.storage == Self.read(10).storageCapacity + backing.storageCapacity, "the caller's buffer itself")
    }

    @Test("A queued write filling under a quarter of its buffer is copied to its size (a 4 KiB read in a 256 KiB buffer)",
          arguments: [4096, 20_000, 65535])
    func wastefulCopied(count: Int) {
        var queue = StreamOutbound()
        queue.append(Self.read(10), promise: nil, allocator: Self.allocator)
        var backing = Self.allocator.buffer(capacity: 256 * 1024)
        backing.writeRepeatingByte(3, count: count)
        for _ in 0..<50 { queue.append(backing, promise: nil, allocator: Self.allocator) }
        #expect(queue.held.storage < 50 * 2 * count + 2048, "\(queue.held)")
        #expect(Self.take(&queue).bytes == [UInt8](repeating: 1, count: 10) + [UInt8](repeating: 3, count: 50 * count))
    }

    @Test("Promises never keep pieces apart: 20,000 one-byte writes, every other one promised or followed by an empty promised write")
    func promisesShareBuffers() {
        let loop = EmbeddedEventLoop()
        var queue = StreamOutbound()
        queue.append(Self.read(100), promise: nil, allocator: Self.allocator)
        var promised: [EventLoopPromise<Void>] = []
        for index in 0..<20_000 {
            let promise: EventLoopPromise<Void>? = index % 2 == 0 ? loop.makePromise() : nil
            queue.append(Self.read(1), promise: promise, allocator: Self.allocator)
            if let promise { promised.append(promise) }
            if index % 4 == 1 {
                // An HTTP encoder's end of message: an empty write with a promise.
                let end = loop.makePromise(of: Void.self)
                let attached = queue.attachToLast(end)
                #expect(attached)
                promised.append(end)
            }
        }
        #expect(queue.held.chunks <= 4, "\(queue.held)")
        #expect(queue.held.storage < 64 * 1024, "\(queue.held)")
        let first = Self.take(&queue, 100 + 10)
        // Writes 0-9 are taken: five promised ones and the empty writes after 1, 5 and 9.
        #expect(first.finished.count == 5 + 3)
        let rest = Self.take(&queue)
        #expect(first.finished.count + rest.finished.count == promised.count)
        (first.finished + rest.finished).forEach { $0.succeed() }
    }

    @Test("Frames cut anywhere: the bytes come out in order, each promise once its write is taken whole")
    func cutAnywhere() {
        let loop = EmbeddedEventLoop()
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var queue = StreamOutbound()
            var expected: [UInt8] = []
            var promised: [(end: Int, promise: EventLoopPromise<Void>)] = []
            for index in 0..<Int.random(in: 1...60, using: &generator) {
                let count = [1, 7, 300, 4095, 4096, 20_000].randomElement(using: &generator)!
                let byte = UInt8(truncatingIfNeeded: index)
                let promise: EventLoopPromise<Void>? = Bool.random(using: &generator) ? loop.makePromise() : nil
                queue.append(Self.read(count, byte: byte), promise: promise, allocator: Self.allocator)
                expected += Array(repeating: byte, count: count)
                if let promise { promised.append((expected.count, promise)) }
            }
            var out: [UInt8] = []
            var finished = 0
            while queue.bytes > 0 {
                let step = min(queue.bytes, Int.random(in: 1...20_000, using: &generator))
                let taken = Self.take(&queue, step)
                out += taken.bytes
                finished += taken.finished.count
                // Every promise finished so far belongs to a write wholly taken.
                #expect(promised.prefix(finished).allSatisfy { $0.end <= out.count })
                taken.finished.forEach { $0.succeed() }
            }
            #expect(out == expected)
            #expect(finished == promised.count)
        }
    }

    @Test("An empty write's promise completes with what was queued before it, not with what comes after")
    func emptyWritePromise() throws {
        let loop = EmbeddedEventLoop()
        var queue = StreamOutbound()
        let empty = loop.makePromise(of: Void.self)
        let attachedToNothing = queue.attachToLast(empty)
        #expect(!attachedToNothing, "nothing queued: the caller completes it")
        empty.succeed()

        queue.append(Self.read(100), promise: nil, allocator: Self.allocator)
        queue.append(Self.read(5), promise: nil, allocator: Self.allocator) // shares a buffer of ours
        let afterSmall = loop.makePromise(of: Void.self)
        let attachedAfterSmall = queue.attachToLast(afterSmall)
        #expect(attachedAfterSmall)
        queue.append(Self.read(5), promise: nil, allocator: Self.allocator) // joins the shared buffer, not the promise
        #expect(queue.held.chunks == 2)
        let early = Self.take(&queue, 104)
        #expect(early.finished.isEmpty)
        let first = Self.take(&queue, 1)
        #expect(first.finished.count == 1, "complete with the bytes before it")
        first.finished.forEach { $0.succeed() }
        #expect(queue.bytes == 5)

        let earlier = loop.makePromise(of: Void.self)
        queue.append(Self.read(5000), promise: earlier, allocator: Self.allocator)
        let afterLarge = loop.makePromise(of: Void.self)
        let attachedAfterLarge = queue.attachToLast(afterLarge)
        #expect(attachedAfterLarge)
        let almost = Self.take(&queue, queue.bytes - 1)
        #expect(almost.finished.isEmpty, "one byte of the write before it still waits")
        let rest = Self.take(&queue)
        #expect(rest.finished.count == 2, "the write's promise, then the empty write's")
        rest.finished.forEach { $0.succeed() }
        #expect(queue.bytes == 0)
    }

    @Test("removeAll hands back every pending promise and empties the queue")
    func removeAll() {
        let loop = EmbeddedEventLoop()
        var queue = StreamOutbound()
        let promises = (0..<3).map { _ in loop.makePromise(of: Void.self) }
        queue.append(Self.read(10), promise: promises[0], allocator: Self.allocator)
        queue.append(Self.read(10), promise: nil, allocator: Self.allocator)
        queue.append(Self.read(10), promise: promises[1], allocator: Self.allocator)
        queue.append(Self.read(10_000), promise: promises[2], allocator: Self.allocator)
        let pending = queue.removeAll()
        #expect(pending.count == 3)
        #expect(queue.bytes == 0 && queue.held.chunks == 0)
        pending.forEach { $0.fail(ChannelError.ioOnClosedChannel) }
    }
}
