import COpenSSL
import NIOCore

/// A BIO whose two directions are ByteBuffers owned by Swift: ciphertext received from the
/// network is handed to OpenSSL without a BIO_s_mem copy, and ciphertext OpenSSL produces
/// accumulates in one buffer that the handler writes to the channel in one go.
final class ByteBufferBIO {
    /// OpenSSL holds this BIO; its data pointer refers (unretained) to `self`, which the
    /// owning TLSConnection keeps alive for as long as the SSL object exists.
    private(set) var bio: OpaquePointer!
    private var inbound: ByteBuffer?
    private var outbound: ByteBuffer?
    private let allocator: ByteBufferAllocator

    init(allocator: ByteBufferAllocator) {
        self.allocator = allocator
        self.bio = BIO_new(Self.method)
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(bio, 1)
    }

    /// Ciphertext from the network for OpenSSL to read.
    func receive(_ buffer: inout ByteBuffer) {
        if inbound == nil || inbound!.readableBytes == 0 {
            inbound = buffer
        } else {
            inbound!.writeBuffer(&buffer)
        }
    }

    var hasUnreadCiphertext: Bool { (inbound?.readableBytes ?? 0) > 0 }

    /// Pre-sizes the outbound buffer before a large SSL_write so records append without regrowth.
    func reserveOutbound(_ bytes: Int) {
        if outbound == nil {
            outbound = allocator.buffer(capacity: bytes)
        } else {
            outbound!.reserveCapacity(minimumWritableBytes: bytes)
        }
    }

    /// Everything OpenSSL wrote since the last call, or nil.
    func takeOutbound() -> ByteBuffer? {
        guard let buffer = outbound, buffer.readableBytes > 0 else { return nil }
        outbound = nil
        return buffer
    }

    fileprivate func read(into destination: UnsafeMutablePointer<CChar>, count: Int) -> Int {
        guard let available = inbound?.readableBytes, available > 0 else { return 0 }
        let length = min(count, available)
        inbound!.readWithUnsafeReadableBytes { source in
            UnsafeMutableRawPointer(destination).copyMemory(from: source.baseAddress!, byteCount: length)
            return length
        }
        // Drained: let the receive buffer go (it can be 16-256 KB) rather than hold it for the
        // life of an idle connection; thousands of idle sessions add up.
        if inbound!.readableBytes == 0 { inbound = nil }
        return length
    }

    fileprivate func write(from source: UnsafePointer<CChar>, count: Int) {
        if outbound == nil { outbound = allocator.buffer(capacity: max(count, 16 * 1024 + 64)) }
        outbound!.writeBytes(UnsafeRawBufferPointer(start: source, count: count))
    }

    private static func owner(_ bio: OpaquePointer?) -> ByteBufferBIO? {
        guard let bio, let data = BIO_get_data(bio) else { return nil }
        return Unmanaged<ByteBufferBIO>.fromOpaque(data).takeUnretainedValue()
    }

    /// One BIO_METHOD for the process, created on first use. `nonisolated(unsafe)`: it is
    /// written once (Swift's lazy static initialisation is thread-safe) and only read after.
    nonisolated(unsafe) private static let method: OpaquePointer = {
        let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "backup-sidecar ByteBuffer BIO")!
        BIO_meth_set_write(method) { bio, data, length in
            guard let owner = ByteBufferBIO.owner(bio), let data, length >= 0 else { return -1 }
            bs_BIO_clear_retry_flags(bio)
            owner.write(from: data, count: Int(length))
            return length
        }
        BIO_meth_set_read(method) { bio, data, length in
            guard let owner = ByteBufferBIO.owner(bio), let data, length >= 0 else { return -1 }
            bs_BIO_clear_retry_flags(bio)
            let copied = owner.read(into: data, count: Int(length))
            if copied == 0 {
                bs_BIO_set_retry_read(bio)
                return -1
            }
            return Int32(copied)
        }
        BIO_meth_set_ctrl(method) { _, command, _, _ in
            // FLUSH must succeed (OpenSSL flushes after each flight); nothing else is supported.
            command == BIO_CTRL_FLUSH ? 1 : 0
        }
        BIO_meth_set_create(method) { bio in
            BIO_set_init(bio, 0)
            return 1
        }
        BIO_meth_set_destroy(method) { bio in
            BIO_set_data(bio, nil)
            BIO_set_init(bio, 0)
            return 1
        }
        return method
    }()
}
