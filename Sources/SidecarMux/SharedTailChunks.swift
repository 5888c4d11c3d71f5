import NIOCore

/// The buffers a stream holds in one direction, in order, where a small piece that queues
/// behind others is copied into a shared buffer of ours instead of keeping the buffer it came
/// in (a 64 KiB decrypt buffer, a local receive buffer). A peer or a local caller sending one
/// byte at a time to a stalled stream then makes it hold about what it was sent. The two
/// queues of a stream, `StreamInbound` and `StreamOutbound`, decide what is small.
struct SharedTailChunks {
    /// What a shared buffer takes in all (written, taken or not: a taken front is not freed).
    static let sharedCapacity = 16 * 1024

    /// Two slots, not NIO's default 16: an idle stream holds no chunk, and a busy one grows the
    /// ring as far as it needs (it does not shrink). With two of these and `StreamOutbound`'s
    /// promises per stream, the default slots were about 1 KiB of every idle mux tunnel on each
    /// side (heaptrack, bench/scale.sh).
    private var chunks = CircularBuffer<ByteBuffer>(initialCapacity: 2)
    /// The last chunk is a buffer of ours that small pieces are appended to.
    private var tailIsShared = false

    var isEmpty: Bool { chunks.isEmpty }

    /// Queues `buffer` as it came.
    mutating func append(_ buffer: ByteBuffer) {
        chunks.append(buffer)
        tailIsShared = false
    }

    /// Queues a copy of `buffer` in the shared tail, or in a new shared buffer when it is full.
    mutating func appendCopy(_ buffer: ByteBuffer, allocator: ByteBufferAllocator) {
        let count = buffer.readableBytes
        if tailIsShared, var tail = chunks.popLast() {
            // Taken out of the queue first, so the write below does not copy the buffer.
            if tail.writerIndex + count <= Self.sharedCapacity {
                tail.writeImmutableBuffer(buffer)
                chunks.append(tail)
                return
            }
            chunks.append(tail)
        }
        var shared = allocator.buffer(capacity: max(count, 1024))
        shared.writeImmutableBuffer(buffer)
        chunks.append(shared)
        tailIsShared = true
    }

    /// Up to `count` bytes from the front: the first chunk whole, or a slice of it.
    mutating func popFront(upTo count: Int) -> ByteBuffer? {
        guard var first = chunks.first else { return nil }
        guard first.readableBytes > count else {
            chunks.removeFirst()
            if chunks.isEmpty { tailIsShared = false }
            return first
        }
        let slice = first.readSlice(length: count)!
        chunks[chunks.startIndex] = first
        return slice
    }

    mutating func removeAll() {
        chunks.removeAll()
        tailIsShared = false
    }

    /// The chunks queued and the storage they hold (a storage shared by two chunks counts
    /// twice): what a test of the memory bound reads.
    var held: (chunks: Int, storage: Int) { (chunks.count, chunks.reduce(0) { $0 + $1.storageCapacity }) }
}

extension ByteBuffer {
    /// Its bytes fill more than a quarter of the storage they keep alive: fine to queue as it
    /// is. Anything less (a 4 KiB record alone in a 64 KiB decrypt buffer) is copied to its
    /// size before it waits, by the mux stream's queue and by the app socket's compactor.
    package var fillsAQuarterOfItsStorage: Bool { readableBytes * 4 > storageCapacity }

    /// A buffer holding just the readable bytes.
    package func copiedToSize(allocator: ByteBufferAllocator) -> ByteBuffer {
        var copy = allocator.buffer(capacity: readableBytes)
        copy.writeImmutableBuffer(self)
        return copy
    }
}
