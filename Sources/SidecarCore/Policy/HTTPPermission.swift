import Foundation

/// What an L7 permission looks at in one HTTP request.
public struct HTTPRequestFacts: Sendable, Equatable {
    public var method: String
    /// The request-target's path, without the query string (as Consul/Envoy match it).
    public var path: String
    /// Header names lowercased; repeated headers keep every value.
    public var headers: [(name: String, value: String)]

    public init(method: String, target: String, headers: [(name: String, value: String)]) {
        self.method = method.uppercased()
        self.path = String(target.prefix { $0 != "?" && $0 != "#" })
        self.headers = headers.map { ($0.name.lowercased(), $0.value) }
    }

    /// All values of a header joined with "," (how Envoy presents repeated headers), or nil.
    func header(_ name: String) -> String? {
        let values = headers.filter { $0.name == name }.map(\.value)
        return values.isEmpty ? nil : values.joined(separator: ",")
    }

    public static func == (lhs: HTTPRequestFacts, rhs: HTTPRequestFacts) -> Bool {
        lhs.method == rhs.method && lhs.path == rhs.path
            && lhs.headers.elementsEqual(rhs.headers) { $0.name == $1.name && $0.value == $1.value }
    }
}

/// A full-match regular expression (Consul's PathRegex/Regex are RE2 full matches; we use
/// ICU syntax, which agrees for the patterns permissions are written with). Anchored with
/// \A...\z, so not even a trailing newline is left outside the match.
public struct FullMatchRegex: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    private let compiled: UncheckedRegex

    public init(_ pattern: String) throws {
        // The pattern must be a complete expression by itself: otherwise "a)|(b" would close
        // our anchoring group early and turn a full match into a substring match.
        _ = try NSRegularExpression(pattern: pattern)
        self.pattern = pattern
        compiled = UncheckedRegex(try NSRegularExpression(pattern: "\\A(?:\(pattern))\\z"))
    }

    public func matches(_ text: String) -> Bool {
        compiled.regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil
    }

    public var description: String { pattern }
    public static func == (lhs: FullMatchRegex, rhs: FullMatchRegex) -> Bool { lhs.pattern == rhs.pattern }

    /// NSRegularExpression is immutable and documented thread-safe.
    private struct UncheckedRegex: @unchecked Sendable {
        let regex: NSRegularExpression
        init(_ regex: NSRegularExpression) { self.regex = regex }
    }
}

/// The `HTTP` block of a Consul intention permission.
public struct HTTPPermissionMatch: Sendable, Equatable {
    public enum PathRule: Sendable, Equatable {
        case any
        case exact(String)
        case prefix(String)
        case regex(FullMatchRegex)
    }

    public struct HeaderRule: Sendable, Equatable {
        public enum Condition: Sendable, Equatable {
            case present
            case exact(String)
            case prefix(String)
            case suffix(String)
            case regex(FullMatchRegex)
        }

        public var name: String
        public var condition: Condition
        public var invert: Bool

        public init(name: String, condition: Condition, invert: Bool = false) {
            self.name = name.lowercased()
            self.condition = condition
            self.invert = invert
        }

        func matches(_ request: HTTPRequestFacts) -> Bool {
            let value = request.header(name)
            let matched: Bool
            switch condition {
            case .present: matched = value != nil
            case .exact(let wanted): matched = value == wanted
            case .prefix(let prefix): matched = value?.hasPrefix(prefix) ?? false
            case .suffix(let suffix): matched = value?.hasSuffix(suffix) ?? false
            case .regex(let regex): matched = value.map(regex.matches) ?? false
            }
            return matched != invert
        }
    }

    public var path: PathRule
    /// Upper-case; empty means any method.
    public var methods: [String]
    public var headers: [HeaderRule]

    public init(path: PathRule = .any, methods: [String] = [], headers: [HeaderRule] = []) {
        self.path = path
        self.methods = methods.map { $0.uppercased() }
        self.headers = headers
    }

    /// Every stated condition must hold.
    public func matches(_ request: HTTPRequestFacts) -> Bool {
        switch path {
        case .any: break
        case .exact(let exact): guard request.path == exact else { return false }
        case .prefix(let prefix): guard request.path.hasPrefix(prefix) else { return false }
        case .regex(let regex): guard regex.matches(request.path) else { return false }
        }
        if !methods.isEmpty && !methods.contains(request.method) { return false }
        return headers.allSatisfy { $0.matches(request) }
    }
}

/// One entry of an intention's `Permissions`: the first whose HTTP match holds decides.
public struct IntentionPermission: Sendable, Equatable {
    public var action: IntentionAction
    public var http: HTTPPermissionMatch

    public init(action: IntentionAction, http: HTTPPermissionMatch) {
        self.action = action
        self.http = http
    }
}
