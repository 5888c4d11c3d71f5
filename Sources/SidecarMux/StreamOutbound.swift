import NIOCore

/// A stream's written data that nghttp2 has not taken yet as DATA frames, with the promises of
/// its writes.
///
/// Writes usually arrive as slices of the local socket's receive buffers (1 KiB at the least,
/// up to 256 KiB), each holding its whole buffer while it waits for the peer's window. A local
/// caller writing one byte at a time to a stream whose peer grants no window made it hold a
/// receive buffer per byte, up to the stream's 512 KiB mark. So a write that queues behind
/// others is copied when it is small (into shared buffers of ours, as `StreamInbound` does for
/// received data) or fills less than a quarter of its buffer (into one of its size). Promises
/// are kept apart, by the offset where their write ends, so they never keep pieces apart.
struct StreamOutbound {
    /// Below this a write that has to wait is copied into a shared buffer of ours.
    static let smallWrite = 4096
    static let sharedCapacity = 16 * 1024

    private var chunks = CircularBuffer<ByteBuffer>()
    /// Each pending promise with the stream offset its write ends at (appended bytes so far).
    private var promises = CircularBuffer<(end: Int, promise: EventLoopPromise<Void>)>()
    /// Bytes ever appended, and ever taken: offsets in the stream.
    private var appended = 0
    private var taken = 0
    /// The last chunk is a buffer of ours that small writes are appended to.
    private var tailIsShared = false

    /// Bytes queued.
    var bytes: Int { appended - taken }

    mutating func append(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, allocator: ByteBufferAllocator) {
        let count = buffer.readableBytes
        appended += count
        if let promise { promises.append((appended, promise)) }
        // The first write of a batch usually goes out at once: kept as it came.
        guard !chunks.isEmpty else {
            chunks.append(buffer)
            tailIsShared = false
            return
        }
        if count >= Self.smallWrite {
            if count * 4 > buffer.storageCapacity {
                chunks.append(buffer)
            } else {
                var copy = allocator.buffer(capacity: count)
                copy.writeImmutableBuffer(buffer)
                chunks.append(copy)
            }
            tailIsShared = false
            return
        }
        if tailIsShared, var tail = chunks.popLast() {
            // Taken out of the queue first, so the write below does not copy the buffer. The
            // bound counts what was written, taken or not: the taken front is not freed.
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

    /// An empty write's promise: done once what is queued before it is. False when nothing is
    /// queued (the caller completes it).
    mutating func attachToLast(_ promise: EventLoopPromise<Void>) -> Bool {
        guard bytes > 0 else { return false }
        promises.append((appended, promise))
        return true
    }

    /// Moves `count` queued bytes into `frames` as payload; the promises of the writes now
    /// taken whole go to `finished`, in order.
    mutating func take(_ count: Int, into frames: inout OutboundFrames, finished: inout [EventLoopPromise<Void>]) {
        var remaining = count
        while remaining > 0, var chunk = chunks.popFirst() {
            if chunk.readableBytes <= remaining {
                remaining -= chunk.readableBytes
                frames.append(payload: &chunk)
            } else {
                var slice = chunk.readSlice(length: remaining)!
                frames.append(payload: &slice)
                remaining = 0
                chunks.prepend(chunk)
            }
        }
        taken += count - remaining
        while let first = promises.first, first.end <= taken {
            finished.append(promises.removeFirst().promise)
        }
        if chunks.isEmpty { tailIsShared = false }
    }

    /// Empties the queue; the promises of what was in it.
    mutating func removeAll() -> [EventLoopPromise<Void>] {
        let pending = promises.map(\.promise)
        chunks.removeAll()
        promises.removeAll()
        taken = appended
        tailIsShared = false
        return pending
    }

    /// The chunks queued and the storage they hold (a storage shared by two chunks counts
    /// twice): what a test of the memory bound reads.
    var held: (chunks: Int, storage: Int) { (chunks.count, chunks.reduce(0) { $0 + $1.storageCapacity }) }
}
