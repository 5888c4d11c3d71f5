import NIOCore

/// A stream's received data its reader has not asked for yet, and what it costs to hold.
///
/// DATA payloads usually arrive as slices of the 64 KiB buffer TLS decrypted them into, which
/// keeps bulk copy-free but holds that whole buffer while the slice waits. NGHTTP2Session
/// copies payloads too small for the buffer they came in; here, small payloads that queue
/// behind others share buffers of our own, so a peer sending one-byte DATA frames to a stream
/// whose reader is stalled makes it hold about what it was sent, not a buffer per frame.
struct StreamInbound {
    /// Below this a payload that has to wait is copied into a shared buffer of ours.
    static let smallPayload = 4096
    static let sharedCapacity = 16 * 1024

    private var chunks = CircularBuffer<ByteBuffer>()
    /// Payload bytes queued (what the peer's window is owed once they are delivered).
    private(set) var bytes = 0
    /// The last chunk is a buffer of ours that small payloads are appended to.
    private var tailIsShared = false

    var isEmpty: Bool { chunks.isEmpty }

    mutating func append(_ data: ByteBuffer, allocator: ByteBufferAllocator) {
        let count = data.readableBytes
        bytes += count
        // The first chunk of a batch is usually delivered at once: kept as it came.
        guard count < Self.smallPayload, !chunks.isEmpty else {
            chunks.append(data)
            tailIsShared = false
            return
        }
        if tailIsShared, var tail = chunks.popLast() {
            // Taken out of the queue first, so the write below does not copy the buffer.
            if tail.writableBytes >= count {
                tail.writeImmutableBuffer(data)
                chunks.append(tail)
                return
            }
            chunks.append(tail)
        }
        var shared = allocator.buffer(capacity: max(Self.sharedCapacity, count))
        shared.writeImmutableBuffer(data)
        chunks.append(shared)
        tailIsShared = true
    }

    mutating func popFirst() -> ByteBuffer? {
        guard let chunk = chunks.popFirst() else { return nil }
        bytes -= chunk.readableBytes
        if chunks.isEmpty { tailIsShared = false }
        return chunk
    }

    mutating func removeAll() {
        chunks.removeAll()
        bytes = 0
        tailIsShared = false
    }

    /// The chunks queued and the storage they hold (a storage shared by two chunks counts
    /// twice): what a test of the memory bound reads.
    var held: (chunks: Int, storage: Int) { (chunks.count, chunks.reduce(0) { $0 + $1.storageCapacity }) }
}
