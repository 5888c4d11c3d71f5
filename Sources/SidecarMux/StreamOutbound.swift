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

    private var chunks = SharedTailChunks()
    /// Each pending promise with the stream offset its write ends at (appended bytes so far).
    /// Two slots to start with, as `SharedTailChunks.chunks`.
    private var promises = CircularBuffer<(end: Int, promise: EventLoopPromise<Void>)>(initialCapacity: 2)
    /// Bytes ever appended, and ever taken: offsets in the stream.
    private var appended = 0
    private var taken = 0

    /// Bytes queued.
    var bytes: Int { appended - taken }

    mutating func append(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, allocator: ByteBufferAllocator) {
        let count = buffer.readableBytes
        appended += count
        if let promise { promises.append((appended, promise)) }
        // The first write of a batch usually goes out at once: kept as it came.
        if chunks.isEmpty || (count >= Self.smallWrite && buffer.fillsAQuarterOfItsStorage) {
            chunks.append(buffer)
        } else if count >= Self.smallWrite {
            chunks.append(buffer.copiedToSize(allocator: allocator))
        } else {
            chunks.appendCopy(buffer, allocator: allocator)
        }
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
        while remaining > 0, var piece = chunks.popFront(upTo: remaining) {
            remaining -= piece.readableBytes
            frames.append(payload: &piece)
        }
        taken += count - remaining
        while let first = promises.first, first.end <= taken {
            finished.append(promises.removeFirst().promise)
        }
    }

    /// Empties the queue; the promises of what was in it.
    mutating func removeAll() -> [EventLoopPromise<Void>] {
        let pending = promises.map(\.promise)
        chunks.removeAll()
        promises.removeAll()
        taken = appended
        return pending
    }

    /// The chunks queued and the storage they hold: what a test of the memory bound reads.
    var held: (chunks: Int, storage: Int) { chunks.held }
}
