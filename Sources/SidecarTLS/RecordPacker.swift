import NIOCore

/// Cuts one flush's plaintext writes into whole TLS records before they are encrypted.
///
/// The whole records inside a write go on as slices of it, uncopied; only a record that spans
/// two writes is assembled in a buffer of its own, a copy of at most one record. Every piece but
/// the flush's last is a multiple of the record size, so no short record is cut mid-flush. For
/// the mux, whose DATA frames arrive as a 9-byte header and a 64 KiB payload slice, that is one
/// 16 KiB copy per frame instead of framing the payload into a buffer of its own; small writes
/// (a keep-alive request's frames) are gathered into one record as before.
struct RecordPacker {
    static let recordSize = 16 * 1024

    private let allocator: ByteBufferAllocator
    /// The start of a record that the writes so far did not fill.
    private var partial: ByteBuffer?
    /// Whether `partial` is a buffer of its own (else a slice of the caller's write, not yet copied).
    private var partialOwned = false
    /// Plaintext bytes copied so far (what the packing costs).
    private(set) var copiedBytes = 0

    init(allocator: ByteBufferAllocator) {
        self.allocator = allocator
    }

    /// Takes the next write; hands `emit` what is ready to encrypt, in order.
    mutating func add(_ write: ByteBuffer, emit: (ByteBuffer) -> Void) {
        var write = write
        guard write.readableBytes > 0 else { return }
        if var record = partial {
            partial = nil // `record` is now the only reference: appending does not copy it again
            if !partialOwned {
                var owned = allocator.buffer(capacity: Self.recordSize)
                copiedBytes += owned.writeBuffer(&record)
                record = owned
            }
            var head = write.readSlice(length: min(Self.recordSize - record.readableBytes, write.readableBytes))!
            copiedBytes += record.writeBuffer(&head)
            guard record.readableBytes == Self.recordSize else {
                partial = record
                partialOwned = true
                return
            }
            emit(record)
        }
        let whole = write.readableBytes - write.readableBytes % Self.recordSize
        if whole > 0 { emit(write.readSlice(length: whole)!) }
        if write.readableBytes > 0 {
            partial = write
            partialOwned = false
        }
    }

    /// Ends the flush: hands on the short last record, if any.
    mutating func finish(emit: (ByteBuffer) -> Void) {
        if let record = partial { emit(record) }
        partial = nil
    }
}
