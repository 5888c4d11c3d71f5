import FoundationEssentials
import SidecarModel

/// An error answered to the HTTP client with a status code and a plain-text body.
struct HTTPError: Error, CustomStringConvertible {
    var status: Int
    var message: String

    static func badRequest(_ message: String) -> HTTPError { HTTPError(status: 400, message: message) }
    static func notFound(_ message: String) -> HTTPError { HTTPError(status: 404, message: message) }
    static let aclNotFound = HTTPError(status: 403, message: "ACL not found")
    static let permissionDenied = HTTPError(status: 403, message: "Permission denied")

    var description: String { message }
}

/// A received JSON object read the way Consul decodes requests: field names compared without
/// case and underscores, so `destination_name` and `DestinationName` are the same field.
struct Fields {
    let value: JSONValue
    let path: String

    init(_ value: JSONValue, path: String = "") {
        self.value = value
        self.path = path
    }

    static func parse(_ data: Data, what: String) throws -> Fields {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: data) else {
            throw HTTPError.badRequest("Request decode failed: \(what) is not valid JSON")
        }
        return Fields(value)
    }

    static func normalize(_ key: String) -> String {
        String(key.lowercased().filter { $0 != "_" && $0 != "-" })
    }

    var isObject: Bool { if case .object = value { return true } else { return false } }

    private func fail(_ name: String, _ message: String) -> HTTPError {
        .badRequest("Request decode failed: \(path.isEmpty ? name : "\(path).\(name)"): \(message)")
    }

    /// The field in any spelling; nil when absent, null, or this is not an object.
    func field(_ name: String) -> Fields? {
        guard case .object(let fields) = value else { return nil }
        let wanted = Self.normalize(name)
        guard let match = fields.first(where: { Self.normalize($0.key) == wanted }), match.value != .null else { return nil }
        return Fields(match.value, path: path.isEmpty ? name : "\(path).\(name)")
    }

    func string(_ name: String) throws -> String? {
        guard let node = field(name) else { return nil }
        guard case .string(let text) = node.value else { throw fail(name, "expected a string") }
        return text
    }

    func int(_ name: String) throws -> Int? {
        guard let node = field(name) else { return nil }
        switch node.value {
        case .integer(let number): return Int(number)
        case .number(let number) where number.rounded() == number: return Int(number)
        case .string(let text) where Int(text) != nil: return Int(text)
        default: throw fail(name, "expected an integer")
        }
    }

    func bool(_ name: String) throws -> Bool? {
        guard let node = field(name) else { return nil }
        guard case .bool(let flag) = node.value else { throw fail(name, "expected true or false") }
        return flag
    }

    func array(_ name: String) throws -> [Fields]? {
        guard let node = field(name) else { return nil }
        guard case .array(let items) = node.value else { throw fail(name, "expected an array") }
        return items.enumerated().map { Fields($0.element, path: "\(node.path)[\($0.offset)]") }
    }

    /// A map echoed as given (its keys are user data, not field names).
    func map(_ name: String) throws -> JSONValue? {
        guard let node = field(name) else { return nil }
        guard case .object = node.value else { throw fail(name, "expected an object") }
        return node.value
    }

    func strings(_ name: String) throws -> [String]? {
        try array(name)?.map { item in
            guard case .string(let text) = item.value else { throw HTTPError.badRequest("Request decode failed: \(item.path): expected a string") }
            return text
        }
    }
}

extension JSONValue {
    /// Serialized text, for handing a received document to SidecarCore's decoders.
    var data: Data { JSON(self).data }

    static let emptyObject = JSONValue.object([:])
}

/// Consul's API spelling of a snake_case or lower-case field name: `path_exact` -> `PathExact`.
enum PascalCase {
    private static let acronyms: Set<String> = ["http", "id", "jwt", "tls", "ns", "ttl", "uri", "url", "ip"]

    static func key(_ key: String) -> String {
        if key.contains(where: \.isUppercase) && !key.contains("_") { return key }
        return key.split(separator: "_").map { part -> String in
            let lower = part.lowercased()
            if acronyms.contains(lower) { return lower.uppercased() }
            return lower.prefix(1).uppercased() + lower.dropFirst()
        }.joined()
    }

    /// Renames the field names of a config entry, leaving user maps (`Meta`, `Config`) as given.
    static func convert(_ value: JSONValue, preserving maps: Set<String> = ["Meta", "Config"]) -> JSON {
        switch value {
        case .object(let fields):
            return .object(fields.sorted { $0.key < $1.key }.map { field in
                let name = key(field.key)
                return (name, maps.contains(name) ? JSON(field.value) : convert(field.value, preserving: maps))
            })
        case .array(let items):
            return .array(items.map { convert($0, preserving: maps) })
        default:
            return JSON(value)
        }
    }
}
