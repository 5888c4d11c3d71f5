import NIOCore

/// The frames one `NGHTTP2Session.send` serialized, in order, as the buffers to write.
///
/// What nghttp2 writes itself (frame headers, control frames) and small DATA payloads are
/// gathered into buffers of our own. A payload of two TLS records or more stays the slice its
/// stream queued (as read from the local socket): the TLS handler encrypts the whole records in
/// it in place, so bulk data is not copied once more into a frame buffer. Smaller payloads are
/// copied: the frame header before a slice shifts it off the record boundaries, so TLS copies up
/// to a record of each slice anyway, and a smaller slice would save little for an extra write.
struct OutboundFrames {
    /// Payloads below this are gathered (two TLS records of 16 KiB).
    static let sliceThreshold = 32 * 1024

    private let allocator: ByteBufferAllocator
    private var buffers: [ByteBuffer] = []
    private var gathered: ByteBuffer?
    /// Bytes serialized so far, slices included.
    private(set) var byteCount = 0

    init(allocator: ByteBufferAllocator) {
        self.allocator = allocator
    }

    var isEmpty: Bool { byteCount == 0 }

    mutating func write(_ bytes: UnsafeRawBufferPointer) {
        withGathered(minimumWritable: bytes.count) { $0.writeBytes(bytes) }
        byteCount += bytes.count
    }

    mutating func writeInteger(_ byte: UInt8) {
        withGathered(minimumWritable: 1) { $0.writeInteger(byte) }
        byteCount += 1
    }

    mutating func writeZeros(_ count: Int) {
        guard count > 0 else { return }
        withGathered(minimumWritable: count) { $0.writeRepeatingByte(0, count: count) }
        byteCount += count
    }

    /// Takes all of `payload`'s readable bytes.
    mutating func append(payload: inout ByteBuffer) {
        let count = payload.readableBytes
        guard count > 0 else { return }
        if count < Self.sliceThreshold {
            withGathered(minimumWritable: count) { $0.writeBuffer(&payload) }
        } else {
            if let pending = gathered { buffers.append(pending) }
            gathered = nil
            buffers.append(payload.readSlice(length: count)!)
        }
        byteCount += count
    }

    /// Hands out the buffers, in order; none is empty. (No array is made for a send that is all
    /// gathered, as the frames of a keep-alive request are.)
    func forEach(_ body: (ByteBuffer) -> Void) {
        buffers.forEach(body)
        if let gathered { body(gathered) }
    }

    private mutating func withGathered(minimumWritable: Int, _ body: (inout ByteBuffer) -> Void) {
        // Taken out while written to: the only reference, so it grows in place.
        var buffer = gathered ?? allocator.buffer(capacity: max(minimumWritable, 1024))
        gathered = nil
        body(&buffer)
        gathered = buffer
    }
}
