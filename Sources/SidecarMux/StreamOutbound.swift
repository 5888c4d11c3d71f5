import NIOCore

/// A stream's written data that nghttp2 has not taken yet as DATA frames, with the promises of
/// its writes.
///
/// Writes usually arrive as slices of the local socket's receive buffers (1 KiB at the least),
/// each holding its whole buffer while it waits for the peer's window. A local caller writing
/// one byte at a time to a stream whose peer grants no window would make it hold a receive
/// buffer per byte, up to the stream's 512 KiB mark. So small writes that queue behind others
/// are copied into shared buffers of ours, as `StreamInbound` does for received data.
struct StreamOutbound {
    /// Below this a write that has to wait is copied into a shared buffer of ours.
    static let smallWrite = 4096
    static let sharedCapacity = 16 * 1024

    private var chunks = CircularBuffer<(ByteBuffer, EventLoopPromise<Void>?)>()
    /// Bytes queued.
    private(set) var bytes = 0
    /// The last chunk is a buffer of ours with no promise: small writes are appended to it.
    private var tailIsShared = false

    mutating func append(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, allocator: ByteBufferAllocator) {
        let count = buffer.readableBytes
        bytes += count
        // The first write of a batch usually goes out at once: kept as it came.
        guard count < Self.smallWrite, promise == nil, !chunks.isEmpty else {
            chunks.append((buffer, promise))
            tailIsShared = false
            return
        }
        if tailIsShared, var tail = chunks.popLast()?.0 {
            // Taken out of the queue first, so the write below does not copy the buffer.
            if tail.writableBytes >= count {
                tail.writeImmutableBuffer(buffer)
                chunks.append((tail, nil))
                return
            }
            chunks.append((tail, nil))
        }
        var shared = allocator.buffer(capacity: Self.sharedCapacity)
        shared.writeImmutableBuffer(buffer)
        chunks.append((shared, nil))
        tailIsShared = true
    }

    /// An empty write's promise: done once what is queued before it is. False when nothing is
    /// queued (the caller completes it).
    mutating func attachToLast(_ promise: EventLoopPromise<Void>) -> Bool {
        guard let last = chunks.last else { return false }
        if let earlier = last.1 {
            earlier.futureResult.cascade(to: promise)
        } else {
            chunks[chunks.index(before: chunks.endIndex)].1 = promise
            tailIsShared = false // a promise is not delayed by data written after it
        }
        return true
    }

    /// Moves `count` queued bytes into `frames` as payload; the promises of the writes taken
    /// whole go to `finished`.
    mutating func take(_ count: Int, into frames: inout OutboundFrames, finished: inout [EventLoopPromise<Void>]) {
        var remaining = count
        while remaining > 0, case (var chunk, let promise)? = chunks.popFirst() {
            if chunk.readableBytes <= remaining {
                remaining -= chunk.readableBytes
                frames.append(payload: &chunk)
                if let promise { finished.append(promise) }
            } else {
                var slice = chunk.readSlice(length: remaining)!
                frames.append(payload: &slice)
                remaining = 0
                chunks.prepend((chunk, promise))
            }
        }
        bytes -= count - remaining
        if chunks.isEmpty { tailIsShared = false }
    }

    /// Empties the queue; the promises of what was in it.
    mutating func removeAll() -> [EventLoopPromise<Void>] {
        let promises = chunks.compactMap(\.1)
        chunks.removeAll()
        bytes = 0
        tailIsShared = false
        return promises
    }

    /// The chunks queued and the storage they hold (a storage shared by two chunks counts
    /// twice): what a test of the memory bound reads.
    var held: (chunks: Int, storage: Int) { (chunks.count, chunks.reduce(0) { $0 + $1.0.storageCapacity }) }
}
