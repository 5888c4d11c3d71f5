import CRE2

/// What an L7 permission looks at in one HTTP request.
package struct HTTPRequestFacts: Sendable, Equatable {
    /// As sent: methods are case-sensitive (the request rules refuse lower-case ones).
    package var method: String
    /// The normalised path, without the query string (as Consul/Envoy match it).
    package var path: String
    /// Header names lowercased; repeated headers keep every value. Pseudo-headers (`:method`,
    /// `:path` with its query, `:authority`, `:scheme`) are among them on both protocols.
    var headers: [(name: String, value: String)]

    package init(method: String, path: String, headers: [(name: String, value: String)]) {
        self.method = method
        self.path = path
        self.headers = headers.map { ($0.name.lowercased(), $0.value) }
    }

    /// All values of a header joined with "," (how Envoy presents repeated headers), or nil.
    package func header(_ name: String) -> String? {
        let values = headers.filter { $0.name == name }.map(\.value)
        return values.isEmpty ? nil : values.joined(separator: ",")
    }

    package static func == (lhs: HTTPRequestFacts, rhs: HTTPRequestFacts) -> Bool {
        lhs.method == rhs.method && lhs.path == rhs.path
            && lhs.headers.elementsEqual(rhs.headers) { $0.name == $1.name && $0.value == $1.value }
    }
}

/// A full-match regular expression with RE2 semantics (Consul's PathRegex and header Regex
/// become Envoy `safe_regex`, which is RE2): matched in time linear in the input, so no
/// pattern can make a request stall an event loop; backreferences and lookaround, which RE2
/// refuses, are refused at load as Consul would.
package struct FullMatchRegex: Sendable, Equatable, CustomStringConvertible {
    /// Bounds the compiled program (and so memory and time per input byte). Envoy's default is
    /// 100, which already refuses `[0-9a-f]{64}`; ours is more generous.
    static let maxProgramSize = 10_000

    let pattern: String
    private let compiled: CompiledRE2

    init(_ pattern: String) throws {
        self.pattern = pattern
        compiled = try CompiledRE2(pattern, maxProgramSize: Self.maxProgramSize)
    }

    func matches(_ text: String) -> Bool { compiled.fullMatch(text) }

    package var description: String { pattern }
    package static func == (lhs: FullMatchRegex, rhs: FullMatchRegex) -> Bool { lhs.pattern == rhs.pattern }
}

/// The `HTTP` block of a Consul intention permission.
package struct HTTPPermissionMatch: Sendable, Equatable {
    package enum PathRule: Sendable, Equatable {
        case any
        case exact(String)
        case prefix(String)
        case regex(FullMatchRegex)
    }

    package struct HeaderRule: Sendable, Equatable {
        enum Condition: Sendable, Equatable {
            case present
            case exact(String)
            case prefix(String)
            case suffix(String)
            case contains(String)
            case regex(FullMatchRegex)
        }

        package var name: String
        var condition: Condition
        var invert: Bool
        /// ASCII case folding of the value for exact, prefix, suffix and contains (Consul's
        /// IgnoreCase; like Envoy, never for regex).
        var ignoreCase: Bool

        init(name: String, condition: Condition, invert: Bool = false, ignoreCase: Bool = false) {
            self.name = name.lowercased()
            self.condition = condition
            self.invert = invert
            self.ignoreCase = ignoreCase
        }

        /// Envoy's header matching, which Consul's rules compile to: repeated fields are joined
        /// with "," into one value; an absent header matches only `Present` with `Invert`
        /// (every other condition fails on it, inverted or not); a present one matches when its
        /// condition holds, or does not with `Invert`.
        ///
        /// `inDeny`: the rule belongs to a deny permission, where a reading that matches more is
        /// the safe one, so two more readings also match: each repeated field on its own (a
        /// second `x-check` field must not hide `x-check: bad`, which a service reading one of
        /// them would see), and an inverted rule on an absent header (leaving the header out
        /// must not get a request past "X-Job is not exactly nightly"). In an allow permission
        /// Envoy's reading is the narrower one and is kept.
        func matches(_ request: HTTPRequestFacts, inDeny: Bool = false) -> Bool {
            let values = request.headers.filter { $0.name == name }.map(\.value)
            guard !values.isEmpty else {
                if case .present = condition { return invert }
                return invert && inDeny
            }
            let joined = values.joined(separator: ",")
            if holds(for: joined) { return true }
            return inDeny && values.count > 1 && values.contains(where: holds)
        }

        /// The condition, inverted if asked, on one value.
        private func holds(for value: String) -> Bool {
            let fold: (String) -> String = ignoreCase ? { $0.asciiLowercased } : { $0 }
            let matched: Bool
            switch condition {
            case .present: matched = true
            case .exact(let wanted): matched = fold(value) == fold(wanted)
            case .prefix(let prefix): matched = fold(value).hasPrefix(fold(prefix))
            case .suffix(let suffix): matched = fold(value).hasSuffix(fold(suffix))
            case .contains(let part): matched = fold(value).contains(fold(part))
            case .regex(let regex): matched = regex.matches(value)
            }
            return matched != invert
        }
    }

    package var path: PathRule
    /// Upper-case; empty means any method.
    var methods: [String]
    var headers: [HeaderRule]

    package init(path: PathRule = .any, methods: [String] = [], headers: [HeaderRule] = []) {
        self.path = path
        // Consul upper-cases the methods it is given; requests are matched as sent.
        self.methods = methods.map { $0.uppercased() }
        self.headers = headers
    }

    /// Every stated condition must hold. `inDeny`: see `HeaderRule.matches`.
    func matches(_ request: HTTPRequestFacts, inDeny: Bool = false) -> Bool {
        switch path {
        case .any: break
        case .exact(let exact): guard request.path == exact else { return false }
        case .prefix(let prefix): guard request.path.hasPrefix(prefix) else { return false }
        case .regex(let regex): guard regex.matches(request.path) else { return false }
        }
        if !methods.isEmpty && !methods.contains(request.method) { return false }
        return headers.allSatisfy { $0.matches(request, inDeny: inDeny) }
    }
}

/// One entry of an intention's `Permissions`: the first whose HTTP match holds decides.
package struct IntentionPermission: Sendable, Equatable {
    package var action: IntentionAction
    var http: HTTPPermissionMatch
    /// The permission's `JWT`: Consul would also require a valid token, which this sidecar
    /// cannot verify; the permission then denies whatever its action.
    package var requiresJWT: Bool

    package init(action: IntentionAction, http: HTTPPermissionMatch, requiresJWT: Bool = false) {
        self.action = action
        self.http = http
        self.requiresJWT = requiresJWT
    }
}

extension String {
    /// A-Z to a-z only: HTTP's case-insensitivity, unaffected by locale or Unicode rules.
    var asciiLowercased: String {
        String(decoding: utf8.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 + 32 : $0 }, as: UTF8.self)
    }
}
