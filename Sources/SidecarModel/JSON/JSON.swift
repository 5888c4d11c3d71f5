import FoundationEssentials

/// A JSON document to send. Objects keep their key order so responses read like Consul's
/// (Go encodes struct fields in declaration order and map keys sorted).
package indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    package static func == (lhs: JSON, rhs: JSON) -> Bool { lhs.serialized() == rhs.serialized() }

    package static func int(_ value: Int) -> JSON { .int(Int64(value)) }
    package static func uint(_ value: UInt64) -> JSON { .int(Int64(clamping: value)) }
    package static func optionalString(_ value: String?) -> JSON { value.map(JSON.string) ?? .null }

    /// A JSON value received from a client, echoed back as given (map keys sorted, as Go does).
    package init(_ value: JSONValue) {
        switch value {
        case .null: self = .null
        case .bool(let flag): self = .bool(flag)
        case .integer(let number): self = .int(number)
        case .number(let number): self = .double(number)
        case .string(let text): self = .string(text)
        case .array(let items): self = .array(items.map(JSON.init))
        case .object(let fields): self = .object(fields.sorted { $0.key < $1.key }.map { ($0.key, JSON($0.value)) })
        }
    }

    package func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, indent: pretty ? "" : nil)
        return out
    }

    package var data: Data { Data(serialized().utf8) }

    private func write(into out: inout String, indent: String?) {
        switch self {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .int(let number): out += String(number)
        case .double(let number):
            out += number.isFinite ? (number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : "\(number)") : "null"
        case .string(let text): Self.writeString(text, into: &out)
        case .array(let items):
            guard !items.isEmpty else { out += "[]"; return }
            out += "["
            for (offset, item) in items.enumerated() {
                if offset > 0 { out += "," }
                if let indent { out += "\n" + indent + "    " }
                item.write(into: &out, indent: indent.map { $0 + "    " })
            }
            if let indent { out += "\n" + indent }
            out += "]"
        case .object(let fields):
            guard !fields.isEmpty else { out += "{}"; return }
            out += "{"
            for (offset, field) in fields.enumerated() {
                if offset > 0 { out += "," }
                if let indent { out += "\n" + indent + "    " }
                Self.writeString(field.0, into: &out)
                out += indent == nil ? ":" : ": "
                field.1.write(into: &out, indent: indent.map { $0 + "    " })
            }
            if let indent { out += "\n" + indent }
            out += "}"
        }
    }

    private static func writeString(_ text: String, into out: inout String) {
        out += JSONText.quoted(text)
    }
}

/// One JSON string literal writer for everything that hand-builds JSON (audit lines, the dev
/// agent's ordered responses).
package enum JSONText {
    package static func quoted(_ text: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count + 2)
        appendQuoted(text, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A JSON number for an integer, its digits written in place (no String per number: an
    /// audit line has up to seven).
    package static func appendInteger(_ value: Int, to out: inout [UInt8]) {
        if value < 0 { out.append(UInt8(ascii: "-")) }
        let magnitude = value.magnitude // Int.min has no positive Int
        var place: UInt = 1
        while magnitude / place >= 10 { place *= 10 } // at most 10^19, which UInt holds
        appendDecimalDigits(of: magnitude, fromPlace: place, to: &out)
    }

    /// A JSON string literal, escaped byte by byte: only `"`, `\` and control bytes need it, and
    /// none of them can occur inside a multi-byte UTF-8 sequence, so every other byte is copied
    /// as it is, in runs. Audit lines are built this way for every connection. Eight bytes are
    /// tested at a time (`mayNeedEscape`), a byte at a time only around one that may need it.
    package static func appendQuoted(_ text: String, to out: inout [UInt8]) {
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        out.append(quote)
        var text = text
        text.withUTF8 { bytes in
            guard let base = bytes.baseAddress else { return }
            let count = bytes.count
            var copied = 0, index = 0
            while index < count {
                if count - index >= 8,
                   !mayNeedEscape(UnsafeRawPointer(base + index).loadUnaligned(as: UInt64.self)) {
                    index += 8
                    continue
                }
                let byte = base[index]
                index += 1
                guard byte < 0x20 || byte == quote || byte == backslash else { continue }
                out.append(contentsOf: UnsafeBufferPointer(start: base + copied, count: index - 1 - copied))
                out.append(backslash)
                switch byte {
                case quote, backslash: out.append(byte)
                case UInt8(ascii: "\n"): out.append(UInt8(ascii: "n"))
                case UInt8(ascii: "\r"): out.append(UInt8(ascii: "r"))
                case UInt8(ascii: "\t"): out.append(UInt8(ascii: "t"))
                default:
                    out.append(contentsOf: "u00".utf8)
                    out.append(lowercaseHexDigit(byte >> 4))
                    out.append(lowercaseHexDigit(byte & 0x0f))
                }
                copied = index
            }
            out.append(contentsOf: UnsafeBufferPointer(start: base + copied, count: count - copied))
        }
        out.append(quote)
    }

    /// Whether any of the eight bytes is below 0x20, a `"` or a `\`: exact as a yes/no (the
    /// borrows these subtractions can spread only follow a byte that already matched).
    static func mayNeedEscape(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        func hasZeroByte(_ value: UInt64) -> Bool { (value &- ones) & ~value & highs != 0 }
        let hasControl = (word &- ones &* 0x20) & ~word & highs != 0
        return hasControl || hasZeroByte(word ^ (ones &* 0x22)) || hasZeroByte(word ^ (ones &* 0x5C))
    }
}
