/// RFC 3986 percent-encoding, ours rather than Foundation's (`removingPercentEncoding`,
/// `addingPercentEncoding` live in the part of Foundation that brings ICU into the binary).
package enum PercentEncoding {
    /// One hex digit's value (any case); nil for anything else.
    package static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// `text` with every `%XX` decoded; nil for a broken escape, a byte `accepting` refuses
    /// (unescaped bytes only), or a result that is not valid UTF-8.
    package static func decode(_ text: some StringProtocol, accepting: (UInt8) -> Bool = { _ in true }) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                    return nil
                }
                bytes.append(high << 4 | low)
            } else {
                guard accepting(byte) else { return nil }
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    /// `text` for one URL path segment: the bytes `keeping` accepts stay (by default RFC 3986's
    /// pchar: unreserved characters, sub-delimiters, ":" and "@"); every other byte of its
    /// UTF-8 (always "/", "?", "#", "%") becomes `%XX`.
    package static func encodePathSegment(_ text: String, keeping: (UInt8) -> Bool = isSegmentCharacter) -> String {
        encode(text.utf8) { keeping($0) && !"/?#%".utf8.contains($0) }
    }

    /// `bytes` as text: the ASCII bytes `keeping` accepts as they are, every other byte `%XX`
    /// (upper-case hex). `keeping` must refuse "%" and every byte above 0x7F.
    package static func encode(_ bytes: some Sequence<UInt8>, keeping: (UInt8) -> Bool) -> String {
        var out = ""
        out.reserveCapacity(bytes.underestimatedCount)
        for byte in bytes {
            if keeping(byte) {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + String(byte >> 4, radix: 16, uppercase: true) + String(byte & 0xF, radix: 16, uppercase: true)
            }
        }
        return out
    }

    /// RFC 3986 `pchar` without `%`: unreserved / sub-delims / ":" / "@".
    package static func isSegmentCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "-._~!$&'()*+,;=:@".utf8.contains(byte)
        }
    }
}
