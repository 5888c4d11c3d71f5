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
        var out = ""
        appendQuoted(text, to: &out)
        return out
    }

    package static func appendQuoted(_ text: String, to out: inout String) {
        out += "\""
        // Most values (identities, addresses, listener names) need no escaping at all.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += text
            out += "\""
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
