import FoundationEssentials

/// A configuration error that names the file and the field.
package struct ConfigError: Error, CustomStringConvertible, Equatable {
    let source: String
    package let path: String
    package let message: String

    package init(source: String, path: String, message: String) {
        self.source = source
        self.path = path
        self.message = message
    }

    package var description: String {
        path.isEmpty ? "\(source): \(message)" : "\(source): \(path): \(message)"
    }
}

/// A position in a JSON document, for reading fields with Consul's spelling rules and
/// path-bearing errors.
struct ConfigNode {
    let value: JSONValue
    let path: String
    let source: String
    /// An opaque map (proxy or upstream `Config`): of two spellings of a key, the one spelled
    /// exactly as asked wins, as Consul's mapstructure decoding does; elsewhere two spellings
    /// are an error.
    var prefersExactKey = false

    func asOpaqueMap() -> ConfigNode {
        var node = self
        node.prefersExactKey = true
        return node
    }

    /// Consul accepts `local_bind_port` in files and `LocalBindPort` from the API: compare field
    /// names without case and underscores.
    static func normalize(_ key: String) -> String {
        String(key.lowercased().filter { $0 != "_" && $0 != "-" })
    }

    func error(_ message: String, at subpath: String? = nil) -> ConfigError {
        ConfigError(source: source, path: subpath.map { path.isEmpty ? $0 : "\(path).\($0)" } ?? path, message: message)
    }

    func object() throws -> [String: JSONValue] {
        guard case .object(let fields) = value else { throw error("expected an object, found \(value.typeName)") }
        return fields
    }

    /// The field named `name` in any Consul spelling; nil when absent or null.
    /// Two spellings of one field (`"name"` and `"Name"`) are an error, not a coin toss.
    func field(_ name: String) throws -> ConfigNode? {
        let wanted = Self.normalize(name)
        var matches = try object().filter { Self.normalize($0.key) == wanted }
        if matches.count > 1, prefersExactKey, let exact = matches[name] { matches = [name: exact] }
        if matches.count > 1 {
            throw error("field given more than once (\(matches.keys.sorted().joined(separator: ", ")))", at: name)
        }
        guard let child = matches.first?.value, child != .null else { return nil }
        return ConfigNode(value: child, path: path.isEmpty ? name : "\(path).\(name)", source: source)
    }

    func require(_ name: String) throws -> ConfigNode {
        guard let node = try field(name) else { throw error("required field is missing", at: name) }
        return node
    }

    func string() throws -> String {
        guard case .string(let text) = value else { throw error("expected a string, found \(value.typeName)") }
        return text
    }

    /// Integers; `weak` also accepts numeric strings, as Consul's proxy config maps do.
    func integer(weak: Bool = false) throws -> Int {
        switch value {
        case .integer(let number): return Int(number)
        case .number(let number) where number.rounded() == number && abs(number) < 1e15: return Int(number)
        case .string(let text) where weak:
            if let number = Int(text.trimmingWhitespace()) { return number }
            throw error("expected an integer, found \"\(text)\"")
        default:
            throw error("expected an integer, found \(value.typeName)")
        }
    }

    func port() throws -> Int {
        let number = try integer(weak: true)
        guard (1...65535).contains(number) else { throw error("port \(number) is outside 1-65535") }
        return number
    }

    func array() throws -> [ConfigNode] {
        guard case .array(let items) = value else { throw error("expected an array, found \(value.typeName)") }
        return items.enumerated().map { ConfigNode(value: $0.element, path: "\(path)[\($0.offset)]", source: source) }
    }

    func optionalString(_ name: String) throws -> String? { try field(name)?.string() }
}

/// Typed readers shared by the config-file and Consul API decoders.
extension ConfigNode {
    func bool() throws -> Bool {
        guard case .bool(let flag) = value else { throw error("expected true or false, found \(value.typeName)") }
        return flag
    }

    /// A JSON number holding a Go `uint64`. `JSONValue` keeps integers as `Int64`; values above
    /// `Int64.max` arrive as a `Double`, so they are exact only up to 2^53 and are rounded
    /// beyond (e.g. Consul's `ConsulCARoot.serialNumber`).
    func uint64() throws -> UInt64 {
        switch value {
        case .integer(let number):
            guard number >= 0 else { throw error("expected a non-negative integer, found \(number)") }
            return UInt64(number)
        case .number(let number) where number >= 0 && number.rounded() == number && number <= 18_446_744_073_709_551_616.0:
            // 2^64 itself is what UInt64.max rounds to as a Double.
            return number >= 18_446_744_073_709_551_616.0 ? .max : UInt64(number)
        default:
            throw error("expected a non-negative integer, found \(value.typeName)")
        }
    }

    func nonEmptyString() throws -> String {
        let text = try string()
        guard !text.isEmpty else { throw error("must not be empty") }
        return text
    }

    /// An optional string where "" means the same as absent (Go's zero value).
    func optionalNonEmptyString(_ name: String) throws -> String? {
        try optionalString(name).flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A required field that must be a non-empty string.
    func requiredNonEmptyString(_ name: String) throws -> String {
        try require(name).nonEmptyString()
    }
}
