import CNGHTTP2

/// One decoded header field. Names and values are valid UTF-8 by construction (the decoder
/// refuses anything else), so re-encoding them gives back exactly the bytes that were decided on.
struct HTTP2HeaderField: Equatable, Sendable {
    var name: String
    var value: String

    init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }

    var isPseudo: Bool { name.hasPrefix(":") }
}

enum HPACKError: Error, Equatable, CustomStringConvertible {
    case compression(Int)
    case invalidName
    case invalidValue(String)
    case tooLarge(Int)

    var description: String {
        switch self {
        case .compression(let code): return "HPACK decoding failed (nghttp2 error \(code))"
        case .invalidName: return "invalid header field name"
        case .invalidValue(let name): return "invalid value for header field \(name)"
        case .tooLarge(let limit): return "header list larger than \(limit) bytes"
        }
    }
}

/// The client's HPACK decoding context for one connection (nghttp2's inflater). Every header
/// block the client sends must pass through it in order, dropped or not, or later blocks that
/// refer to its dynamic table decode wrongly.
final class HeaderBlockDecoder {
    /// Decoded header list limit (field sizes plus 32 each, as SETTINGS_MAX_HEADER_LIST_SIZE
    /// counts): Envoy's default request header limit is 60 KiB.
    static let maxHeaderListSize = 64 * 1024

    private let inflater: OpaquePointer

    init() {
        var created: OpaquePointer?
        guard nghttp2_hd_inflate_new(&created) == 0, let created else { fatalError("nghttp2_hd_inflate_new: out of memory") }
        inflater = created
    }

    deinit { nghttp2_hd_inflate_del(inflater) }

    /// Applies the server's SETTINGS_HEADER_TABLE_SIZE once the client acknowledged it.
    func setMaxTableSize(_ size: Int) {
        nghttp2_hd_inflate_change_table_size(inflater, size)
    }

    /// Decodes one complete header block. After an error the context is unusable: the
    /// connection must end.
    func decode(_ block: [UInt8]) throws(HPACKError) -> [HTTP2HeaderField] {
        let result = block.withUnsafeBufferPointer { inflate($0) }
        return try result.get()
    }

    private func inflate(_ buffer: UnsafeBufferPointer<UInt8>) -> Result<[HTTP2HeaderField], HPACKError> {
        var fields: [HTTP2HeaderField] = []
        var listSize = 0
        var offset = 0
        while true {
            var field = nghttp2_nv()
            var flags: Int32 = 0
            let used = nghttp2_hd_inflate_hd2(inflater, &field, &flags, buffer.baseAddress.map { $0 + offset },
                                              buffer.count - offset, 1)
            guard used >= 0 else { return .failure(.compression(used)) }
            offset += used
            if flags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) != 0 {
                do {
                    let decoded = try Self.field(field)
                    listSize += decoded.name.utf8.count + decoded.value.utf8.count + 32
                    guard listSize <= Self.maxHeaderListSize else { return .failure(.tooLarge(Self.maxHeaderListSize)) }
                    fields.append(decoded)
                } catch {
                    return .failure(error)
                }
            }
            if flags & Int32(NGHTTP2_HD_INFLATE_FINAL.rawValue) != 0 {
                nghttp2_hd_inflate_end_headers(inflater)
                return .success(fields)
            }
            if flags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) == 0 && offset == buffer.count {
                return .failure(.compression(-1))
            }
        }
    }

    /// Field syntax as HTTP/2 requires it (lowercase token names, no CR/LF/NUL or edge
    /// whitespace in values) and UTF-8 so the policy sees the same text the service will.
    private static func field(_ raw: nghttp2_nv) throws(HPACKError) -> HTTP2HeaderField {
        let nameBytes = UnsafeBufferPointer(start: raw.name, count: raw.namelen)
        let valueBytes = UnsafeBufferPointer(start: raw.value, count: raw.valuelen)
        let pseudo = nameBytes.first == UInt8(ascii: ":")
        let token = pseudo ? UnsafeBufferPointer(rebasing: nameBytes.dropFirst()) : nameBytes
        guard !token.isEmpty, nghttp2_check_header_name(token.baseAddress, token.count) != 0,
              let name = String(validating: nameBytes, as: UTF8.self) else {
            throw HPACKError.invalidName
        }
        guard nghttp2_check_header_value_rfc9113(valueBytes.baseAddress, valueBytes.count) != 0,
              let value = String(validating: valueBytes, as: UTF8.self) else {
            throw HPACKError.invalidValue(name)
        }
        return HTTP2HeaderField(name, value)
    }
}

/// Encodes header blocks without ever touching HPACK's dynamic table: every field is written
/// as "never indexed" (or a static-table reference) and no table size update is emitted. So a
/// block decodes the same whatever table state its receiver has, and leaves that state alone:
/// toward the service because the client's table is not the one we encode with, toward the
/// client because its decoder's table belongs to the service's encoder.
final class StatelessHeaderEncoder {
    private let deflater: OpaquePointer

    init() {
        var created: OpaquePointer?
        // 4096 is the protocol's initial table size: a deflater created with it emits no
        // size update, and never-indexed fields never add entries.
        guard nghttp2_hd_deflate_new(&created, 4096) == 0, let created else { fatalError("nghttp2_hd_deflate_new: out of memory") }
        deflater = created
    }

    deinit { nghttp2_hd_deflate_del(deflater) }

    func encode(_ fields: [HTTP2HeaderField]) -> [UInt8] {
        // All names and values in one array, so every pointer handed to nghttp2 comes from a
        // single, still-open buffer access.
        var storage: [UInt8] = []
        var spans: [(name: Range<Int>, value: Range<Int>)] = []
        for field in fields {
            let nameStart = storage.count
            storage += field.name.utf8
            let valueStart = storage.count
            storage += field.value.utf8
            spans.append((nameStart..<valueStart, valueStart..<storage.count))
        }
        return storage.withUnsafeMutableBufferPointer { bytes in
            let entries = spans.map { span in
                nghttp2_nv(name: bytes.baseAddress.map { $0 + span.name.lowerBound },
                           value: bytes.baseAddress.map { $0 + span.value.lowerBound },
                           namelen: span.name.count, valuelen: span.value.count,
                           flags: UInt8(NGHTTP2_NV_FLAG_NO_INDEX.rawValue))
            }
            var out = [UInt8](repeating: 0, count: nghttp2_hd_deflate_bound(deflater, entries, entries.count))
            let written = out.withUnsafeMutableBufferPointer { buffer in
                nghttp2_hd_deflate_hd(deflater, buffer.baseAddress, buffer.count, entries, entries.count)
            }
            precondition(written >= 0, "nghttp2_hd_deflate_hd failed with a buffer of its own bound")
            return Array(out[..<written])
        }
    }
}
