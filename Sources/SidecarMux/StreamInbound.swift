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

    private var chunks = SharedTailChunks()
    /// Payload bytes queued (what the peer's window is owed once they are delivered).
    private(set) var bytes = 0

    var isEmpty: Bool { chunks.isEmpty }

    mutating func append(_ data: ByteBuffer, allocator: ByteBufferAllocator) {
        bytes += data.readableBytes
        // The first chunk of a batch is usually delivered at once: kept as it came.
        if data.readableBytes < Self.smallPayload, !chunks.isEmpty {
            chunks.appendCopy(data, allocator: allocator)
        } else {
            chunks.append(data)
        }
    }

    mutating func popFirst() -> ByteBuffer? {
        guard let chunk = chunks.popFront(upTo: .max) else { return nil }
        bytes -= chunk.readableBytes
        return chunk
    }

    mutating func removeAll() {
        chunks.removeAll()
        bytes = 0
    }

    var held: (chunks: Int, storage: Int) { chunks.held }
}
