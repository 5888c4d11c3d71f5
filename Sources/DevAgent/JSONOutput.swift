import Foundation
import SidecarCore

/// A JSON document to send. Objects keep their key order so responses read like Consul's
/// (Go encodes struct fields in declaration order and map keys sorted).
indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    static func == (lhs: JSON, rhs: JSON) -> Bool { lhs.serialized() == rhs.serialized() }

    static func int(_ value: Int) -> JSON { .int(Int64(value)) }
    static func uint(_ value: UInt64) -> JSON { .int(Int64(clamping: value)) }
    static func optionalString(_ value: String?) -> JSON { value.map(JSON.string) ?? .null }

    /// A JSON value received from a client, echoed back as given (map keys sorted, as Go does).
    init(_ value: JSONValue) {
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

    func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, indent: pretty ? "" : nil)
        return out
    }

    var data: Data { Data(serialized().utf8) }

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

/// Formatting shared by the endpoints.
enum Format {
    /// RFC 3339 with seconds, UTC, as Go's time.Time marshals (without sub-seconds).
    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    static func colonHex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        bytes.map { String(format: "%02x", $0) }.joined(separator: ":")
    }

    static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Go's `time.Duration.String()` for whole seconds: "72h0m0s", "90s", "1m30s".
    static func goDuration(_ seconds: TimeInterval) -> String {
        if seconds < 1 { return "\(Int((seconds * 1000).rounded()))ms" }
        let total = Int(seconds.rounded())
        let hours = total / 3600, minutes = (total % 3600) / 60, secs = total % 60
        if hours > 0 { return "\(hours)h\(minutes)m\(secs)s" }
        if minutes > 0 { return "\(minutes)m\(secs)s" }
        return "\(secs)s"
    }
}
