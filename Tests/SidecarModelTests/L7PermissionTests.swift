import Foundation
import Testing
@testable import SidecarModel

// Pure L7 (HTTP) intention logic: request facts, permission matching, the per-request and
// per-connection decisions, and the decoding/validation of `Permissions` blocks.

private let l7TrustDomain = "td.consul"

private func l7Identity(_ service: String, namespace: String = "default") -> SPIFFEID {
    SPIFFEID(trustDomain: l7TrustDomain, namespace: namespace, datacenter: "dc1", service: service)
}

/// Facts for a request whose (already normalised) target is `target`: the path is what comes
/// before any `?` or `#`.
private func l7Request(_ method: String, _ target: String,
                       _ headers: [(name: String, value: String)] = []) -> HTTPRequestFacts {
    HTTPRequestFacts(method: method, path: String(target.prefix { $0 != "?" && $0 != "#" }), headers: headers)
}

private func l7Regex(_ pattern: String) -> FullMatchRegex {
    do { return try FullMatchRegex(pattern) } catch { fatalError("test regex \(pattern) does not compile: \(error)") }
}

/// One `service-intentions` entry for destination "storage" whose single source
/// "backup-agent" carries exactly the given permission JSON.
private func l7FileWrapping(permission json: String) -> Data {
    Data(#"[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Permissions":[\#(json)]}]}]"#.utf8)
}

private let l7Source = "l7-test.json"
private let l7PermissionPath = "[0].sources[0].permissions[0]"

private func l7DecodePermission(_ json: String) throws -> IntentionPermission {
    let intentions = try IntentionsFile.decode(l7FileWrapping(permission: json), source: l7Source)
    guard intentions.count == 1, intentions[0].permissions.count == 1 else {
        throw ConfigError(source: l7Source, path: "", message: "test: expected one intention with one permission")
    }
    return intentions[0].permissions[0]
}

private func l7Headers(_ pairs: [(String, String)]) -> [(name: String, value: String)] {
    pairs.map { (name: $0.0, value: $0.1) }
}

@Suite("L7 permissions")
struct L7PermissionTests {

    // MARK: - 1. HTTPRequestFacts

    @Suite("HTTP request facts")
    struct RequestFacts {
        @Test("method and path are kept as given: methods are case-sensitive, normalising is the request reader's job")
        func methodAndPathAsGiven() {
            let facts = HTTPRequestFacts(method: "delete", path: "/a/../b", headers: [])
            #expect(facts.method == "delete")
            #expect(facts.path == "/a/../b")
        }

        @Test("header names are lowercased, values kept as is")
        func headerNamesLowercased() {
            let facts = l7Request("GET", "/", l7Headers([("Content-Type", "Application/JSON"), ("X-TENANT", "Acme"), ("accept", "*/*")]))
            #expect(facts.headers.map(\.name) == ["content-type", "x-tenant", "accept"])
            #expect(facts.headers.map(\.value) == ["Application/JSON", "Acme", "*/*"])
            #expect(facts.header("content-type") == "Application/JSON")
            #expect(facts.header("x-tenant") == "Acme")
        }

        @Test("repeated headers are joined with \",\" in arrival order")
        func repeatedHeadersJoined() {
            let facts = l7Request("GET", "/", l7Headers([("X-A", "1"), ("x-a", "2"), ("X-B", "3"), ("X-a", "4")]))
            #expect(facts.header("x-a") == "1,2,4")
            #expect(facts.header("x-b") == "3")
            #expect(facts.header("x-c") == nil)
            // All values are kept, not merged, in the stored list.
            #expect(facts.headers.count == 4)
        }

        @Test("a present header with an empty value is not absent")
        func emptyHeaderValue() {
            let facts = l7Request("GET", "/", l7Headers([("X-Empty", "")]))
            #expect(facts.header("x-empty") == "")
            #expect(l7Request("GET", "/").header("x-empty") == nil)
        }

        @Test("equality compares method, path and ordered headers")
        func equality() {
            let a = l7Request("GET", "/x?1", l7Headers([("A", "1"), ("B", "2")]))
            #expect(a != l7Request("get", "/x?1", l7Headers([("A", "1"), ("B", "2")])))
            #expect(a == l7Request("GET", "/x?2", l7Headers([("a", "1"), ("b", "2")])))
            #expect(a != l7Request("GET", "/x", l7Headers([("b", "2"), ("a", "1")])))
            #expect(a != l7Request("PUT", "/x", l7Headers([("a", "1"), ("b", "2")])))
            #expect(a != l7Request("GET", "/y", l7Headers([("a", "1"), ("b", "2")])))
        }
    }

    // MARK: - 2. Path rules

    struct PathCase: Sendable, CustomTestStringConvertible {
        var rule: HTTPPermissionMatch.PathRule
        var target: String
        var matches: Bool
        var testDescription: String { "\(rule) vs \(target) -> \(matches)" }
    }

    static let pathCases: [PathCase] = [
        // exact
        PathCase(rule: .exact("/health"), target: "/health", matches: true),
        PathCase(rule: .exact("/health"), target: "/health/", matches: false),
        PathCase(rule: .exact("/health"), target: "/health?verbose=1", matches: true),
        PathCase(rule: .exact("/health"), target: "/health#top", matches: true),
        PathCase(rule: .exact("/health"), target: "/healthz", matches: false),
        PathCase(rule: .exact("/health"), target: "/Health", matches: false),
        PathCase(rule: .exact("/health"), target: "/", matches: false),
        PathCase(rule: .exact("/health/"), target: "/health", matches: false),
        // prefix
        PathCase(rule: .prefix("/repo/"), target: "/repo/x", matches: true),
        PathCase(rule: .prefix("/repo/"), target: "/repo/", matches: true),
        PathCase(rule: .prefix("/repo/"), target: "/repo/a/b/c?x=1", matches: true),
        PathCase(rule: .prefix("/repo/"), target: "/repo", matches: false),
        PathCase(rule: .prefix("/repo/"), target: "/repository", matches: false),
        PathCase(rule: .prefix("/repo/"), target: "/other/repo/x", matches: false),
        PathCase(rule: .prefix("/repo/"), target: "/REPO/x", matches: false),
        PathCase(rule: .prefix("/repo"), target: "/repository", matches: true),
        PathCase(rule: .prefix("/"), target: "/", matches: true),
        PathCase(rule: .prefix("/"), target: "/anything/at/all", matches: true),
        // regex: a full match
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "/snap/12", matches: true),
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "/snap/12?x=1", matches: true),
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "/snap/12/x", matches: false),
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "x/snap/1", matches: false),
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "/snap/", matches: false),
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "/snap/1a", matches: false),
        PathCase(rule: .regex(l7Regex("/snap/[0-9]+")), target: "/snap/12\n", matches: false),
        // alternation stays inside the anchors
        PathCase(rule: .regex(l7Regex("/a|/b")), target: "/a", matches: true),
        PathCase(rule: .regex(l7Regex("/a|/b")), target: "/b", matches: true),
        PathCase(rule: .regex(l7Regex("/a|/b")), target: "/ab", matches: false),
        PathCase(rule: .regex(l7Regex("/a|/b")), target: "/x/b", matches: false),
        PathCase(rule: .regex(l7Regex("/repository/.*")), target: "/repository/a/b", matches: true),
        PathCase(rule: .regex(l7Regex("/repository/.*")), target: "/repository", matches: false),
        // any
        PathCase(rule: .any, target: "/", matches: true),
        PathCase(rule: .any, target: "/x/y?z", matches: true),
        PathCase(rule: .any, target: "", matches: true),
    ]

    @Test("path rules", arguments: pathCases)
    func pathRule(_ row: PathCase) {
        let match = HTTPPermissionMatch(path: row.rule)
        #expect(match.matches(l7Request("GET", row.target)) == row.matches)
    }

    // MARK: - FullMatchRegex

    @Test("FullMatchRegex matches the whole string only", arguments: [
        ("[a-z]+", "abc", true),
        ("[a-z]+", "abc1", false),
        ("[a-z]+", "1abc", false),
        ("[a-z]+", "", false),
        ("a*", "", true),
        ("v[0-9]+", "v12", true),
        ("v[0-9]+", "v12-beta", false),
        ("a|b", "a", true),
        ("a|b", "ab", false),
        ("[a-z]+", "abc\n", false),
    ])
    func fullMatchRegex(_ pattern: String, _ text: String, _ expected: Bool) {
        #expect(l7Regex(pattern).matches(text) == expected)
    }

    @Test("FullMatchRegex rejects invalid patterns, including ones that would escape the anchors", arguments: [
        "(", "[", "a)|(b", "/admin)|(.*", "*a",
    ])
    func fullMatchRegexInvalid(_ pattern: String) {
        #expect(throws: (any Error).self) { try FullMatchRegex(pattern) }
    }

    @Test("RE2 semantics: lookaround and backreferences are refused, as Consul's Envoy refuses them", arguments: [
        "(?=a)b", "(?!a)b", "(?<=a)b", "(a)\\1", "a++", "[0-9a-f]{1001}",
    ])
    func re2Only(_ pattern: String) {
        #expect(throws: (any Error).self) { try FullMatchRegex(pattern) }
    }

    /// A pattern that backtracking engines (ICU, PCRE) take exponential time on: RE2 answers in
    /// time linear in the input, so a crafted path cannot stall an event loop. The time limit
    /// is a hang guard, not a measurement (seconds against centuries).
    @Test("catastrophic-backtracking patterns run in linear time", .timeLimit(.minutes(1)), arguments: [
        "(a+)+b", "(a|a)*b", "(a|aa)+b", "(.*a){20}b",
    ])
    func noBacktracking(_ pattern: String) {
        let regex = l7Regex(pattern)
        let text = String(repeating: "a", count: 60_000)
        for _ in 0..<10 { #expect(!regex.matches(text)) }
        #expect(regex.matches(String(repeating: "a", count: 20) + "b"))
    }

    @Test("an unbalanced pattern cannot widen a permission beyond a full match", arguments: [
        ("/admin)|(.*", "/repository/data/x"),
        ("/admin)|(.*", "/admin/users"),
        ("a)|(b", "abc"),
        ("a)|(b", "xxb"),
    ])
    func unbalancedPatternDoesNotWiden(_ pattern: String, _ text: String) {
        // Either the pattern is refused, or it may only match the whole string literally.
        guard let regex = try? FullMatchRegex(pattern) else { return }
        #expect(!regex.matches(text), "pattern \(pattern) matched \(text)")
    }

    @Test("FullMatchRegex equality and description use the pattern")
    func fullMatchRegexEquality() {
        #expect(l7Regex("/a.*") == l7Regex("/a.*"))
        #expect(l7Regex("/a.*") != l7Regex("/b.*"))
        #expect(l7Regex("/a.*").description == "/a.*")
    }

    // MARK: - 3. Methods

    struct MethodCase: Sendable, CustomTestStringConvertible {
        var methods: [String]
        var method: String
        var matches: Bool
        var testDescription: String { "\(methods) vs \(method) -> \(matches)" }
    }

    static let methodCases: [MethodCase] = [
        MethodCase(methods: [], method: "GET", matches: true),
        MethodCase(methods: [], method: "DELETE", matches: true),
        MethodCase(methods: [], method: "PATCH", matches: true),
        MethodCase(methods: [], method: "PROPFIND", matches: true),
        MethodCase(methods: ["get", "Post"], method: "GET", matches: true),
        // Rule methods are upper-cased on load; request methods are case-sensitive (lower-case
        // ones never get this far: the request rules refuse them).
        MethodCase(methods: ["get", "Post"], method: "get", matches: false),
        MethodCase(methods: ["get", "Post"], method: "POST", matches: true),
        MethodCase(methods: ["get", "Post"], method: "post", matches: false),
        MethodCase(methods: ["get", "Post"], method: "PUT", matches: false),
        MethodCase(methods: ["get", "Post"], method: "DELETE", matches: false),
        MethodCase(methods: ["GET"], method: "HEAD", matches: false),
        MethodCase(methods: ["DELETE"], method: "delete", matches: false),
        MethodCase(methods: ["DELETE"], method: "GET", matches: false),
    ]

    @Test("methods", arguments: methodCases)
    func methods(_ row: MethodCase) {
        let match = HTTPPermissionMatch(path: .prefix("/"), methods: row.methods)
        #expect(match.matches(l7Request(row.method, "/x")) == row.matches)
    }

    @Test("the initializer upper-cases methods")
    func methodsUppercasedByInit() {
        #expect(HTTPPermissionMatch(methods: ["get", "Post", "DELETE"]).methods == ["GET", "POST", "DELETE"])
        #expect(HTTPPermissionMatch().methods.isEmpty)
    }

    // MARK: - 4. Header rules

    struct HeaderCase: Sendable, CustomTestStringConvertible {
        var label: String
        var rule: HTTPPermissionMatch.HeaderRule
        var headers: [(name: String, value: String)]
        var matches: Bool
        var testDescription: String { "\(label) -> \(matches)" }
    }

    static func headerCases() -> [HeaderCase] {
        typealias Rule = HTTPPermissionMatch.HeaderRule
        let version = l7Regex("v[0-9]+")
        var cases: [HeaderCase] = []
        func add(_ label: String, _ rule: Rule, _ headers: [(String, String)], _ matches: Bool) {
            cases.append(HeaderCase(label: label, rule: rule, headers: l7Headers(headers), matches: matches))
        }
        // present
        add("present, header there", Rule(name: "x-token", condition: .present), [("X-Token", "abc")], true)
        add("present, empty value", Rule(name: "x-token", condition: .present), [("X-Token", "")], true)
        add("present, header absent", Rule(name: "x-token", condition: .present), [("Other", "1")], false)
        add("present inverted, header there", Rule(name: "x-token", condition: .present, invert: true), [("X-Token", "abc")], false)
        add("present inverted, header absent", Rule(name: "x-token", condition: .present, invert: true), [], true)
        // Envoy: every condition other than Present fails on an absent header, inverted or not.
        // exact
        add("exact equal", Rule(name: "x-version", condition: .exact("v1")), [("X-Version", "v1")], true)
        add("exact longer value", Rule(name: "x-version", condition: .exact("v1")), [("X-Version", "v12")], false)
        add("exact is case-sensitive on the value", Rule(name: "x-version", condition: .exact("v1")), [("X-Version", "V1")], false)
        add("exact, header absent", Rule(name: "x-version", condition: .exact("v1")), [], false)
        add("exact inverted, equal", Rule(name: "x-version", condition: .exact("v1"), invert: true), [("X-Version", "v1")], false)
        add("exact inverted, different", Rule(name: "x-version", condition: .exact("v1"), invert: true), [("X-Version", "v2")], true)
        add("exact inverted, header absent", Rule(name: "x-version", condition: .exact("v1"), invert: true), [], false)
        add("exact empty string, header absent", Rule(name: "x-version", condition: .exact("")), [], false)
        add("exact empty string, empty value", Rule(name: "x-version", condition: .exact("")), [("x-version", "")], true)
        // prefix
        add("prefix matches", Rule(name: "authorization", condition: .prefix("Bearer ")), [("Authorization", "Bearer abc")], true)
        add("prefix is case-sensitive", Rule(name: "authorization", condition: .prefix("Bearer ")), [("Authorization", "bearer abc")], false)
        add("prefix, header absent", Rule(name: "authorization", condition: .prefix("Bearer ")), [], false)
        add("prefix inverted, matches", Rule(name: "authorization", condition: .prefix("Bearer "), invert: true), [("Authorization", "Bearer abc")], false)
        add("prefix inverted, no match", Rule(name: "authorization", condition: .prefix("Bearer "), invert: true), [("Authorization", "Basic abc")], true)
        add("prefix inverted, header absent", Rule(name: "authorization", condition: .prefix("Bearer "), invert: true), [], false)
        // suffix
        add("suffix matches", Rule(name: "host", condition: .suffix(".example.com")), [("Host", "api.example.com")], true)
        add("suffix no match", Rule(name: "host", condition: .suffix(".example.com")), [("Host", "example.com")], false)
        add("suffix, header absent", Rule(name: "host", condition: .suffix(".example.com")), [], false)
        add("suffix inverted, matches", Rule(name: "host", condition: .suffix(".example.com"), invert: true), [("Host", "api.example.com")], false)
        add("suffix inverted, no match", Rule(name: "host", condition: .suffix(".example.com"), invert: true), [("Host", "evil.org")], true)
        add("suffix inverted, header absent", Rule(name: "host", condition: .suffix(".example.com"), invert: true), [], false)
        // regex: full match
        add("regex full match", Rule(name: "x-version", condition: .regex(version)), [("X-Version", "v12")], true)
        add("regex partial is not a match", Rule(name: "x-version", condition: .regex(version)), [("X-Version", "v12-beta")], false)
        add("regex not anchored at start is not a match", Rule(name: "x-version", condition: .regex(version)), [("X-Version", "xv1")], false)
        add("regex, header absent", Rule(name: "x-version", condition: .regex(version)), [], false)
        add("regex inverted, matches", Rule(name: "x-version", condition: .regex(version), invert: true), [("X-Version", "v3")], false)
        add("regex inverted, partial", Rule(name: "x-version", condition: .regex(version), invert: true), [("X-Version", "v3-rc")], true)
        add("regex inverted, header absent", Rule(name: "x-version", condition: .regex(version), invert: true), [], false)
        // contains (Consul 1.20.1)
        add("contains matches", Rule(name: "user-agent", condition: .contains("restic")), [("User-Agent", "restic/0.14.0")], true)
        add("contains no match", Rule(name: "user-agent", condition: .contains("restic")), [("User-Agent", "curl/7.88")], false)
        add("contains is case-sensitive", Rule(name: "user-agent", condition: .contains("restic")), [("User-Agent", "Restic/1")], false)
        add("contains, header absent", Rule(name: "user-agent", condition: .contains("restic")), [], false)
        add("contains inverted", Rule(name: "user-agent", condition: .contains("restic"), invert: true), [("User-Agent", "curl")], true)
        add("contains on joined repeated values", Rule(name: "x-role", condition: .contains("a,b")), [("X-Role", "a"), ("X-Role", "b")], true)
        // ignore case: exact, prefix, suffix, contains fold ASCII; regex never does
        add("exact ignoring case", Rule(name: "x-env", condition: .exact("Prod"), ignoreCase: true), [("X-Env", "pROD")], true)
        add("prefix ignoring case", Rule(name: "authorization", condition: .prefix("bearer "), ignoreCase: true), [("Authorization", "BEARER x")], true)
        add("suffix ignoring case", Rule(name: "host", condition: .suffix(".EXAMPLE.com"), ignoreCase: true), [("Host", "a.example.COM")], true)
        add("contains ignoring case", Rule(name: "user-agent", condition: .contains("RESTIC"), ignoreCase: true), [("User-Agent", "restic/0.14")], true)
        add("ignoring case still compares the text", Rule(name: "x-env", condition: .exact("prod"), ignoreCase: true), [("X-Env", "prod2")], false)
        add("regex ignores IgnoreCase", Rule(name: "x-version", condition: .regex(version), ignoreCase: true), [("X-Version", "V12")], false)
        add("ignoring case folds ASCII only", Rule(name: "x-name", condition: .exact("STRASSE"), ignoreCase: true), [("X-Name", "straße")], false)
        add("exact inverted ignoring case", Rule(name: "x-env", condition: .exact("PROD"), invert: true, ignoreCase: true), [("X-Env", "prod")], false)
        // repeated headers are joined with ","
        add("exact on joined repeated values", Rule(name: "x-role", condition: .exact("a,b")), [("X-Role", "a"), ("x-role", "b")], true)
        add("exact on one of repeated values", Rule(name: "x-role", condition: .exact("a")), [("X-Role", "a"), ("x-role", "b")], false)
        add("prefix on joined repeated values", Rule(name: "x-role", condition: .prefix("a,")), [("X-Role", "a"), ("X-Role", "b")], true)
        add("suffix on joined repeated values", Rule(name: "x-role", condition: .suffix(",b")), [("X-Role", "a"), ("X-Role", "b")], true)
        add("regex on joined repeated values", Rule(name: "x-role", condition: .regex(l7Regex("[a-z](,[a-z])*"))), [("X-Role", "a"), ("X-Role", "b"), ("X-Role", "c")], true)
        add("repeated headers are still present", Rule(name: "x-role", condition: .present), [("X-Role", "a"), ("X-Role", "b")], true)
        // name case-insensitivity
        add("rule name upper, request lower", Rule(name: "X-Tenant", condition: .exact("acme")), [("x-tenant", "acme")], true)
        add("rule name lower, request upper", Rule(name: "x-tenant", condition: .exact("acme")), [("X-TENANT", "acme")], true)
        add("rule name mixed, request mixed", Rule(name: "X-tEnAnT", condition: .present), [("x-TeNaNt", "1")], true)
        add("a different header is not the rule's header", Rule(name: "x-tenant", condition: .present), [("x-tenants", "1")], false)
        return cases
    }

    @Test("header rules", arguments: headerCases())
    func headerRule(_ row: HeaderCase) {
        let request = l7Request("GET", "/", row.headers)
        #expect(row.rule.matches(request) == row.matches)
        #expect(HTTPPermissionMatch(headers: [row.rule]).matches(request) == row.matches)
    }

    @Test("in a deny permission an inverted rule also matches a request without the header; Present inverted is unchanged",
          arguments: [HTTPPermissionMatch.HeaderRule.Condition.exact("v1"), .prefix("v"), .suffix("1"), .contains("v"),
                      .regex(l7Regex("v[0-9]+"))])
    func invertedRuleInDeny(_ condition: HTTPPermissionMatch.HeaderRule.Condition) {
        let rule = HTTPPermissionMatch.HeaderRule(name: "x-version", condition: condition, invert: true)
        let absent = l7Request("GET", "/")
        #expect(rule.matches(absent, inDeny: true))
        #expect(!rule.matches(absent, inDeny: false))
        #expect(!HTTPPermissionMatch.HeaderRule(name: "x-version", condition: condition).matches(absent, inDeny: true))
        let present = l7Request("GET", "/", l7Headers([("X-Version", "v1")]))
        #expect(rule.matches(present, inDeny: true) == rule.matches(present, inDeny: false))
        let presentRule = HTTPPermissionMatch.HeaderRule(name: "x-version", condition: .present, invert: true)
        #expect(presentRule.matches(absent, inDeny: true) && presentRule.matches(absent, inDeny: false))
    }

    @Test("a deny with an inverted header rule cannot be skipped by leaving the header out")
    func denyInvertedNotBypassed() throws {
        let intentions = try IntentionsFile.decode(l7FileWrapping(permission: """
            {"Action": "deny", "HTTP": {"PathPrefix": "/", "Header": [{"Name": "X-Job", "Exact": "nightly", "Invert": true}]}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/"}}
            """), source: l7Source)
        let set = IntentionSet(intentions, defaultAction: .deny)
        func allowed(_ headers: [(String, String)]) -> Bool {
            set.decide(request: l7Request("GET", "/x", l7Headers(headers)), source: l7Identity("backup-agent"), destination: "storage").allowed
        }
        #expect(allowed([("X-Job", "nightly")]))
        #expect(!allowed([("X-Job", "manual")]))
        #expect(!allowed([]))
    }

    @Test("the header rule initializer lowercases the name")
    func headerRuleNameLowercased() {
        let rule = HTTPPermissionMatch.HeaderRule(name: "X-Backup-Client", condition: .present)
        #expect(rule.name == "x-backup-client")
        #expect(rule.invert == false)
    }

    // MARK: - 5. Combination

    struct CombinationCase: Sendable, CustomTestStringConvertible {
        var label: String
        var method: String
        var target: String
        var headers: [(name: String, value: String)]
        var matches: Bool
        var testDescription: String { "\(label) -> \(matches)" }
    }

    static let combined = HTTPPermissionMatch(
        path: .prefix("/api/"), methods: ["GET", "HEAD"],
        headers: [
            HTTPPermissionMatch.HeaderRule(name: "X-Env", condition: .exact("prod")),
            HTTPPermissionMatch.HeaderRule(name: "X-Debug", condition: .present, invert: true),
        ])

    static let combinationCases: [CombinationCase] = [
        CombinationCase(label: "all conditions hold", method: "GET", target: "/api/x", headers: l7Headers([("X-Env", "prod")]), matches: true),
        CombinationCase(label: "all hold, other method in list", method: "HEAD", target: "/api/x?y=1", headers: l7Headers([("x-env", "prod")]), matches: true),
        CombinationCase(label: "wrong path", method: "GET", target: "/web/x", headers: l7Headers([("X-Env", "prod")]), matches: false),
        CombinationCase(label: "wrong method", method: "POST", target: "/api/x", headers: l7Headers([("X-Env", "prod")]), matches: false),
        CombinationCase(label: "wrong header value", method: "GET", target: "/api/x", headers: l7Headers([("X-Env", "dev")]), matches: false),
        CombinationCase(label: "missing header", method: "GET", target: "/api/x", headers: [], matches: false),
        CombinationCase(label: "inverted header rule fails", method: "GET", target: "/api/x", headers: l7Headers([("X-Env", "prod"), ("X-Debug", "1")]), matches: false),
        CombinationCase(label: "everything wrong", method: "DELETE", target: "/", headers: [], matches: false),
    ]

    @Test("all conditions of a permission must hold", arguments: combinationCases)
    func combination(_ row: CombinationCase) {
        #expect(Self.combined.matches(l7Request(row.method, row.target, row.headers)) == row.matches)
    }

    // MARK: - 6. Per-request decisions

    @Suite("IntentionSet request decisions")
    struct RequestDecisions {
        static let agent = l7Identity("backup-agent")
        static let other = l7Identity("billing")

        static func l7Intention(_ source: String, _ permissions: [IntentionPermission]) -> Intention {
            Intention(destinationName: "storage", sourceName: source, action: nil, permissions: permissions)
        }

        @Test("the first matching permission decides: a deny before an allow wins", arguments: [
            ("GET", "/a/x", false, 0),
            ("PUT", "/a/", false, 0),
            ("GET", "/b", true, 1),
            ("GET", "/", true, 1),
        ])
        func denyBeforeAllow(_ method: String, _ target: String, _ allowed: Bool, _ index: Int) {
            let intention = Self.l7Intention("backup-agent", [
                IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .prefix("/a/"))),
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/"))),
            ])
            let set = IntentionSet([intention], defaultAction: .deny)
            let decision = set.decide(request: l7Request(method, target), source: Self.agent, destination: "storage")
            #expect(decision == IntentionDecision(allowed: allowed, reason: .permission(
                identifier: intention.identifier, precedence: 9, index: index)))
            #expect(decision.reasonText.contains("permission #\(index + 1)"))
            #expect(decision.reasonText.contains(intention.identifier))
        }

        @Test("order matters: an allow before the deny for the same path wins")
        func allowBeforeDeny() {
            let intention = Self.l7Intention("backup-agent", [
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/"))),
                IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .prefix("/a/"))),
            ])
            let set = IntentionSet([intention], defaultAction: .deny)
            let decision = set.decide(request: l7Request("GET", "/a/x"), source: Self.agent, destination: "storage")
            #expect(decision == IntentionDecision(allowed: true, reason: .permission(
                identifier: intention.identifier, precedence: 9, index: 0)))
            #expect(decision.reasonText.contains("permission #1"))
        }

        @Test("no permission matched: the default policy decides", arguments: [IntentionAction.allow, .deny])
        func noPermissionMatched(_ defaultAction: IntentionAction) {
            let intention = Self.l7Intention("backup-agent", [
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .exact("/only"))),
                IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .exact("/never"))),
            ])
            let set = IntentionSet([intention], defaultAction: defaultAction)
            let decision = set.decide(request: l7Request("GET", "/other"), source: Self.agent, destination: "storage")
            #expect(decision == IntentionDecision(allowed: defaultAction == .allow, reason: .noPermissionMatched(
                identifier: intention.identifier, precedence: 9)))
            #expect(decision.reasonText.contains("no permission matched"))
            // The matching ones still decide regardless of the default.
            #expect(set.decide(request: l7Request("GET", "/only"), source: Self.agent, destination: "storage").allowed)
            #expect(!set.decide(request: l7Request("GET", "/never"), source: Self.agent, destination: "storage").allowed)
        }

        @Test("an L4 intention decides every request", arguments: [IntentionAction.allow, .deny], [IntentionAction.allow, .deny])
        func l4IntentionDecides(_ action: IntentionAction, _ defaultAction: IntentionAction) {
            let intention = Intention(destinationName: "storage", sourceName: "backup-agent", action: action)
            let set = IntentionSet([intention], defaultAction: defaultAction)
            for (method, target) in [("GET", "/"), ("DELETE", "/repository/x"), ("PATCH", "/a?b"), ("OPTIONS", "*")] {
                let decision = set.decide(request: l7Request(method, target), source: Self.agent, destination: "storage")
                #expect(decision == IntentionDecision(allowed: action == .allow, reason: .intention(
                    identifier: "default/default/backup-agent -> default/storage", precedence: 9)))
            }
        }

        @Test("no intention applies: the default policy", arguments: [IntentionAction.allow, .deny])
        func noIntention(_ defaultAction: IntentionAction) {
            let set = IntentionSet([
                Self.l7Intention("backup-agent", [IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .prefix("/")))]),
            ], defaultAction: defaultAction)
            let expected = IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy)
            // Another source, another destination, another namespace: none match.
            #expect(set.decide(request: l7Request("GET", "/"), source: Self.other, destination: "storage") == expected)
            #expect(set.decide(request: l7Request("GET", "/"), source: Self.agent, destination: "web") == expected)
            #expect(set.decide(request: l7Request("GET", "/"), source: l7Identity("backup-agent", namespace: "ops"),
                               destination: "storage") == expected)
            #expect(set.decide(request: l7Request("GET", "/"), source: Self.agent, destination: "storage",
                               destinationNamespace: "ops") == expected)
            #expect(expected.reasonText == "default policy")
            #expect(IntentionSet([], defaultAction: defaultAction)
                .decide(request: l7Request("GET", "/"), source: Self.agent, destination: "storage") == expected)
        }

        @Test("precedence still picks the intention: exact source with permissions beats a * allow")
        func precedencePicksIntention() {
            let exact = Self.l7Intention("backup-agent", [
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/repository/"))),
            ])
            let wildcard = Intention(destinationName: "storage", sourceName: "*", action: .allow)
            for intentions in [[exact, wildcard], [wildcard, exact]] {
                let set = IntentionSet(intentions, defaultAction: .deny)
                // Not covered by the exact intention's permissions: the * allow does NOT apply.
                let outside = set.decide(request: l7Request("GET", "/admin"), source: Self.agent, destination: "storage")
                #expect(outside == IntentionDecision(allowed: false, reason: .noPermissionMatched(
                    identifier: exact.identifier, precedence: 9)))
                let inside = set.decide(request: l7Request("GET", "/repository/x"), source: Self.agent, destination: "storage")
                #expect(inside == IntentionDecision(allowed: true, reason: .permission(
                    identifier: exact.identifier, precedence: 9, index: 0)))
                // Everyone else gets the * allow, L4-style.
                let billing = set.decide(request: l7Request("GET", "/admin"), source: Self.other, destination: "storage")
                #expect(billing == IntentionDecision(allowed: true, reason: .intention(
                    identifier: wildcard.identifier, precedence: 8)))
            }
        }

        @Test("a * intention with permissions applies to every source below exact ones")
        func wildcardWithPermissions() {
            let wildcard = Self.l7Intention("*", [
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/public/"), methods: ["GET"])),
            ])
            let exactDeny = Intention(destinationName: "storage", sourceName: "billing", action: .deny)
            let set = IntentionSet([wildcard, exactDeny], defaultAction: .deny)
            #expect(set.decide(request: l7Request("GET", "/public/a"), source: Self.agent, destination: "storage")
                == IntentionDecision(allowed: true, reason: .permission(identifier: wildcard.identifier, precedence: 8, index: 0)))
            #expect(set.decide(request: l7Request("PUT", "/public/a"), source: Self.agent, destination: "storage")
                == IntentionDecision(allowed: false, reason: .noPermissionMatched(identifier: wildcard.identifier, precedence: 8)))
            #expect(set.decide(request: l7Request("GET", "/public/a"), source: Self.other, destination: "storage")
                == IntentionDecision(allowed: false, reason: .intention(identifier: exactDeny.identifier, precedence: 9)))
        }

        @Test("reasonText numbers permissions from 1", arguments: [0, 1, 2, 9])
        func reasonTextNumbering(_ index: Int) {
            let decision = IntentionDecision(allowed: true, reason: .permission(
                identifier: "default/default/a -> default/b", precedence: 9, index: index))
            #expect(decision.reasonText == "intention default/default/a -> default/b (precedence 9) permission #\(index + 1)")
        }
    }

    // MARK: - 7. Connection-level decisions

    @Suite("Connection-level decision with l7")
    struct ConnectionDecisions {
        static let agent = l7Identity("backup-agent")

        static let withPermissions = Intention(destinationName: "storage", sourceName: "backup-agent", action: nil, permissions: [
            IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .prefix("/"))),
        ])

        @Test("an intention with permissions lets an L7 connection in, and refuses an L4 one", arguments: [true, false],
              [IntentionAction.allow, .deny])
        func permissionsAndL7(_ l7: Bool, _ defaultAction: IntentionAction) {
            let set = IntentionSet([Self.withPermissions], defaultAction: defaultAction)
            let decision = set.decide(source: Self.agent, destination: "storage", l7: l7)
            #expect(decision == IntentionDecision(allowed: l7, reason: .requiresL7(
                identifier: Self.withPermissions.identifier, precedence: 9)))
        }

        @Test("the default for l7 is false")
        func l7DefaultsToFalse() {
            let set = IntentionSet([Self.withPermissions], defaultAction: .allow)
            #expect(!set.decide(source: Self.agent, destination: "storage").allowed)
        }

        @Test("an L4 intention decides the connection whatever l7 says", arguments: [true, false], [IntentionAction.allow, .deny])
        func l4Intention(_ l7: Bool, _ action: IntentionAction) {
            let intention = Intention(destinationName: "storage", sourceName: "backup-agent", action: action)
            let set = IntentionSet([intention], defaultAction: action == .allow ? .deny : .allow)
            #expect(set.decide(source: Self.agent, destination: "storage", l7: l7)
                == IntentionDecision(allowed: action == .allow, reason: .intention(identifier: intention.identifier, precedence: 9)))
        }

        @Test("no intention: the default policy decides the connection", arguments: [true, false], [IntentionAction.allow, .deny])
        func defaultPolicy(_ l7: Bool, _ defaultAction: IntentionAction) {
            let set = IntentionSet([Self.withPermissions], defaultAction: defaultAction)
            #expect(set.decide(source: l7Identity("billing"), destination: "storage", l7: l7)
                == IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy))
        }
    }

    // MARK: - 8. The backup policy

    @Suite("Backup policy")
    struct BackupPolicy {
        static let json = #"""
        [{"Kind":"service-intentions","Name":"storage","Sources":[
          {"Name":"backup-agent","Permissions":[
             {"Action":"deny","HTTP":{"PathPrefix":"/","Methods":["DELETE"]}},
             {"Action":"allow","HTTP":{"PathPrefix":"/repository/","Methods":["POST","PUT","GET","HEAD"]}}]},
          {"Name":"restore-agent","Permissions":[
             {"Action":"allow","HTTP":{"PathPrefix":"/repository/","Methods":["GET","HEAD"]}}]},
          {"Name":"*","Action":"deny"}]}]
        """#

        static let backupID = "default/default/backup-agent -> default/storage"
        static let restoreID = "default/default/restore-agent -> default/storage"
        static let wildcardID = "default/default/* -> default/storage"

        static func intentions() throws -> [Intention] {
            try IntentionsFile.decode(Data(json.utf8), source: "backup-policy.json")
        }

        enum Expected: Sendable, CustomStringConvertible {
            /// Decided by the source's permission at this index.
            case permission(String, Int)
            /// The source's permissions did not match; default policy.
            case fellThrough(String)
            /// Decided by an L4 intention.
            case intention(String, Int)
            case defaultPolicy

            var reason: IntentionDecision.Reason {
                switch self {
                case .permission(let id, let index): return .permission(identifier: id, precedence: 9, index: index)
                case .fellThrough(let id): return .noPermissionMatched(identifier: id, precedence: 9)
                case .intention(let id, let precedence): return .intention(identifier: id, precedence: precedence)
                case .defaultPolicy: return .defaultPolicy
                }
            }

            var description: String {
                switch self {
                case .permission(_, let index): return "permission #\(index + 1)"
                case .fellThrough: return "no permission matched"
                case .intention(let id, _): return "intention \(id)"
                case .defaultPolicy: return "default policy"
                }
            }
        }

        struct Case: Sendable, CustomTestStringConvertible {
            var service: String
            var namespace = "default"
            var method: String
            var target: String
            var allowed: Bool
            var expected: Expected
            var testDescription: String {
                "\(service) \(method) \(target) -> \(allowed ? "allow" : "deny") (\(expected))"
            }
        }

        static let defaultDenyCases: [Case] = [
            // backup-agent: writes and reads under /repository/
            Case(service: "backup-agent", method: "PUT", target: "/repository/data/ab/abcdef", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "POST", target: "/repository/locks", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "GET", target: "/repository/config", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "HEAD", target: "/repository/keys/k1", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "PUT", target: "/repository/snapshots/s1", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "PUT", target: "/repository/", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "POST", target: "/repository/data?upload=1", allowed: true, expected: .permission(backupID, 1)),
            // backup-agent: DELETE anywhere is denied by permission #1
            Case(service: "backup-agent", method: "DELETE", target: "/repository/data/ab/abcdef", allowed: false, expected: .permission(backupID, 0)),
            Case(service: "backup-agent", method: "DELETE", target: "/repository/", allowed: false, expected: .permission(backupID, 0)),
            Case(service: "backup-agent", method: "DELETE", target: "/", allowed: false, expected: .permission(backupID, 0)),
            Case(service: "backup-agent", method: "DELETE", target: "/somewhere/else", allowed: false, expected: .permission(backupID, 0)),
            Case(service: "backup-agent", method: "DELETE", target: "/repository/locks?force=1", allowed: false, expected: .permission(backupID, 0)),
            // backup-agent: other methods and other paths fall through to default deny
            Case(service: "backup-agent", method: "PATCH", target: "/repository/config", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "OPTIONS", target: "/repository/", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "GET", target: "/", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "GET", target: "/admin", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "GET", target: "/repository", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "PUT", target: "/repositoryx/data", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "PUT", target: "/other/repository/x", allowed: false, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "GET", target: "/Repository/config", allowed: false, expected: .fellThrough(backupID)),
            // restore-agent: read-only
            Case(service: "restore-agent", method: "GET", target: "/repository/data/ab/abcdef", allowed: true, expected: .permission(restoreID, 0)),
            Case(service: "restore-agent", method: "HEAD", target: "/repository/", allowed: true, expected: .permission(restoreID, 0)),
            Case(service: "restore-agent", method: "GET", target: "/repository/config?x=1", allowed: true, expected: .permission(restoreID, 0)),
            Case(service: "restore-agent", method: "PUT", target: "/repository/data/ab/abcdef", allowed: false, expected: .fellThrough(restoreID)),
            Case(service: "restore-agent", method: "POST", target: "/repository/locks", allowed: false, expected: .fellThrough(restoreID)),
            Case(service: "restore-agent", method: "DELETE", target: "/repository/locks/l1", allowed: false, expected: .fellThrough(restoreID)),
            Case(service: "restore-agent", method: "DELETE", target: "/", allowed: false, expected: .fellThrough(restoreID)),
            Case(service: "restore-agent", method: "GET", target: "/admin", allowed: false, expected: .fellThrough(restoreID)),
            // anyone else: L4 deny from "*"
            Case(service: "billing", method: "GET", target: "/repository/config", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "billing", method: "HEAD", target: "/repository/", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "billing", method: "PUT", target: "/repository/data/x", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "billing", method: "POST", target: "/repository/locks", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "billing", method: "DELETE", target: "/repository/data/x", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "billing", method: "GET", target: "/", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "web", method: "GET", target: "/repository/config", allowed: false, expected: .intention(wildcardID, 8)),
            // same service name in another namespace: no intention applies ("*" is default/*)
            Case(service: "backup-agent", namespace: "ops", method: "PUT", target: "/repository/data/x", allowed: false, expected: .defaultPolicy),
        ]

        @Test("the policy file decodes to the expected intentions")
        func decodesAsWritten() throws {
            let intentions = try Self.intentions()
            try #require(intentions.count == 3)
            #expect(intentions.map(\.identifier) == [Self.backupID, Self.restoreID, Self.wildcardID])
            #expect(intentions.map(\.action) == [nil, nil, .deny])
            #expect(intentions[0].permissions == [
                IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .prefix("/"), methods: ["DELETE"])),
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/repository/"),
                                                                              methods: ["POST", "PUT", "GET", "HEAD"])),
            ])
            #expect(intentions[1].permissions == [
                IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/repository/"), methods: ["GET", "HEAD"])),
            ])
            #expect(intentions[2].permissions.isEmpty)
            #expect(intentions.map(\.precedence) == [9, 9, 8])
        }

        @Test("requests under default deny", arguments: defaultDenyCases)
        func defaultDeny(_ row: Case) throws {
            let set = IntentionSet(try Self.intentions(), defaultAction: .deny)
            let decision = set.decide(request: l7Request(row.method, row.target), source: l7Identity(row.service, namespace: row.namespace),
                                      destination: "storage")
            #expect(decision.allowed == row.allowed)
            #expect(decision.reason == row.expected.reason)
        }

        static let defaultAllowCases: [Case] = [
            // Explicit permissions decide as before.
            Case(service: "backup-agent", method: "PUT", target: "/repository/data/x", allowed: true, expected: .permission(backupID, 1)),
            Case(service: "backup-agent", method: "DELETE", target: "/repository/data/x", allowed: false, expected: .permission(backupID, 0)),
            Case(service: "restore-agent", method: "GET", target: "/repository/config", allowed: true, expected: .permission(restoreID, 0)),
            // Fall-through now lands on the allowing default (Consul semantics).
            Case(service: "backup-agent", method: "PATCH", target: "/repository/config", allowed: true, expected: .fellThrough(backupID)),
            Case(service: "backup-agent", method: "GET", target: "/admin", allowed: true, expected: .fellThrough(backupID)),
            Case(service: "restore-agent", method: "PUT", target: "/repository/data/x", allowed: true, expected: .fellThrough(restoreID)),
            Case(service: "restore-agent", method: "DELETE", target: "/repository/data/x", allowed: true, expected: .fellThrough(restoreID)),
            // The "*" deny is an intention, not the default: still denied.
            Case(service: "billing", method: "GET", target: "/repository/config", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "billing", method: "DELETE", target: "/", allowed: false, expected: .intention(wildcardID, 8)),
            Case(service: "backup-agent", namespace: "ops", method: "DELETE", target: "/repository/x", allowed: true, expected: .defaultPolicy),
        ]

        @Test("requests under default allow", arguments: defaultAllowCases)
        func defaultAllow(_ row: Case) throws {
            let set = IntentionSet(try Self.intentions(), defaultAction: .allow)
            let decision = set.decide(request: l7Request(row.method, row.target), source: l7Identity(row.service, namespace: row.namespace),
                                      destination: "storage")
            #expect(decision.allowed == row.allowed)
            #expect(decision.reason == row.expected.reason)
        }

        @Test("connections with l7: billing is refused, the agents are let in", arguments: [
            ("backup-agent", true, true),
            ("restore-agent", true, true),
            ("billing", true, false),
            ("web", true, false),
            ("backup-agent", false, false),
            ("restore-agent", false, false),
            ("billing", false, false),
        ])
        func connections(_ service: String, _ l7: Bool, _ allowed: Bool) throws {
            let set = IntentionSet(try Self.intentions(), defaultAction: .deny)
            let decision = set.decide(source: l7Identity(service), destination: "storage", l7: l7)
            #expect(decision.allowed == allowed)
            switch service {
            case "backup-agent": #expect(decision.reason == .requiresL7(identifier: Self.backupID, precedence: 9))
            case "restore-agent": #expect(decision.reason == .requiresL7(identifier: Self.restoreID, precedence: 9))
            default: #expect(decision.reason == .intention(identifier: Self.wildcardID, precedence: 8))
            }
        }

        @Test("connections to another destination are not governed by this policy", arguments: [IntentionAction.allow, .deny])
        func otherDestination(_ defaultAction: IntentionAction) throws {
            let set = IntentionSet(try Self.intentions(), defaultAction: defaultAction)
            for service in ["backup-agent", "restore-agent", "billing"] {
                #expect(set.decide(source: l7Identity(service), destination: "web", l7: true)
                    == IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy))
            }
        }
    }

    // MARK: - 9. Decoding

    @Suite("Permission decoding")
    struct Decoding {
        struct ErrorCase: Sendable, CustomTestStringConvertible {
            var label: String
            var permission: String
            var path: String
            var message: String
            var testDescription: String { label }
        }

        static let p = l7PermissionPath

        static let errorCases: [ErrorCase] = [
            ErrorCase(label: "permission without Action", permission: #"{"HTTP":{"PathPrefix":"/"}}"#,
                      path: "\(p).action", message: "required field is missing"),
            ErrorCase(label: "Action not allow/deny", permission: #"{"Action":"permit","HTTP":{"PathPrefix":"/"}}"#,
                      path: "\(p).action", message: #""permit" is not "allow" or "deny""#),
            ErrorCase(label: "Action not a string", permission: #"{"Action":true,"HTTP":{"PathPrefix":"/"}}"#,
                      path: "\(p).action", message: "expected a string"),
            ErrorCase(label: "missing HTTP", permission: #"{"Action":"allow"}"#,
                      path: "\(p).http", message: "required field is missing"),
            ErrorCase(label: "HTTP null", permission: #"{"Action":"allow","HTTP":null}"#,
                      path: "\(p).http", message: "required field is missing"),
            ErrorCase(label: "HTTP not an object", permission: #"{"Action":"allow","HTTP":"/"}"#,
                      path: "\(p).http", message: "expected an object"),
            ErrorCase(label: "PathExact without leading slash", permission: #"{"Action":"allow","HTTP":{"PathExact":"health"}}"#,
                      path: "\(p).http.path_exact", message: #"must begin with "/""#),
            ErrorCase(label: "PathPrefix without leading slash", permission: #"{"Action":"allow","HTTP":{"PathPrefix":"repository/"}}"#,
                      path: "\(p).http.path_prefix", message: #"must begin with "/""#),
            ErrorCase(label: "PathExact and PathPrefix", permission: #"{"Action":"allow","HTTP":{"PathExact":"/a","PathPrefix":"/b"}}"#,
                      path: "\(p).http", message: "at most one of PathExact, PathPrefix, PathRegex"),
            ErrorCase(label: "PathPrefix and PathRegex", permission: #"{"Action":"allow","HTTP":{"PathPrefix":"/a","PathRegex":"/b.*"}}"#,
                      path: "\(p).http", message: "at most one of PathExact, PathPrefix, PathRegex"),
            ErrorCase(label: "all three path fields", permission: #"{"Action":"allow","HTTP":{"PathExact":"/a","PathPrefix":"/b","PathRegex":"/c"}}"#,
                      path: "\(p).http", message: "at most one of"),
            ErrorCase(label: "one path field spelled twice", permission: #"{"Action":"allow","HTTP":{"PathPrefix":"/a","path_prefix":"/b"}}"#,
                      path: "\(p).http.path_prefix", message: "field given more than once"),
            ErrorCase(label: "invalid PathRegex", permission: #"{"Action":"allow","HTTP":{"PathRegex":"("}}"#,
                      path: "\(p).http.path_regex", message: #"invalid regular expression "(""#),
            ErrorCase(label: "PathRegex with unbalanced parentheses that would escape the anchors",
                      permission: #"{"Action":"allow","HTTP":{"PathRegex":"/admin)|(.*"}}"#,
                      path: "\(p).http.path_regex", message: "invalid regular expression"),
            ErrorCase(label: "header rule with two conditions", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Exact":"a","Prefix":"b"}]}}"#,
                      path: "\(p).http.header[0]", message: "exactly one of Present, Exact, Prefix, Suffix, Contains, Regex (found 2)"),
            ErrorCase(label: "header rule with Present and Regex", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Present":true,"Regex":"a"}]}}"#,
                      path: "\(p).http.header[0]", message: "(found 2)"),
            ErrorCase(label: "header rule with no condition", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x"}]}}"#,
                      path: "\(p).http.header[0]", message: "(found 0)"),
            ErrorCase(label: "header rule with only Present false", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Present":false}]}}"#,
                      path: "\(p).http.header[0]", message: "(found 0)"),
            ErrorCase(label: "second header rule is bad", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Present":true},{"Name":"y","Suffix":"a","Exact":"b"}]}}"#,
                      path: "\(p).http.header[1]", message: "(found 2)"),
            ErrorCase(label: "header rule without Name", permission: #"{"Action":"allow","HTTP":{"Header":[{"Exact":"a"}]}}"#,
                      path: "\(p).http.header[0].name", message: "required field is missing"),
            ErrorCase(label: "header rule with empty Name", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"","Exact":"a"}]}}"#,
                      path: "\(p).http.header[0].name", message: "must not be empty"),
            ErrorCase(label: "header rule invalid Regex", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Regex":"["}]}}"#,
                      path: "\(p).http.header[0].regex", message: "invalid regular expression"),
            ErrorCase(label: "Invert not a bool", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Present":true,"Invert":"yes"}]}}"#,
                      path: "\(p).http.header[0].invert", message: "expected true or false"),
            ErrorCase(label: "Present not a bool", permission: #"{"Action":"allow","HTTP":{"Header":[{"Name":"x","Present":"true"}]}}"#,
                      path: "\(p).http.header[0].present", message: "expected true or false"),
            ErrorCase(label: "Header not an array", permission: #"{"Action":"allow","HTTP":{"Header":{"Name":"x","Present":true}}}"#,
                      path: "\(p).http.header", message: "expected an array"),
            ErrorCase(label: "Methods entry with a space", permission: #"{"Action":"allow","HTTP":{"Methods":["GET","DE LETE"]}}"#,
                      path: "\(p).http.methods[1]", message: #""DE LETE" is not an HTTP method"#),
            ErrorCase(label: "Methods entry with a digit", permission: #"{"Action":"allow","HTTP":{"Methods":["G3T"]}}"#,
                      path: "\(p).http.methods[0]", message: "is not an HTTP method"),
            ErrorCase(label: "Methods entry empty", permission: #"{"Action":"allow","HTTP":{"Methods":[""]}}"#,
                      path: "\(p).http.methods[0]", message: "is not an HTTP method"),
            ErrorCase(label: "Methods entry not a string", permission: #"{"Action":"allow","HTTP":{"Methods":[1]}}"#,
                      path: "\(p).http.methods[0]", message: "expected a string"),
            ErrorCase(label: "Methods not an array", permission: #"{"Action":"allow","HTTP":{"Methods":"GET"}}"#,
                      path: "\(p).http.methods", message: "expected an array"),
            ErrorCase(label: "HTTP block with no condition", permission: #"{"Action":"allow","HTTP":{}}"#,
                      path: "\(p).http", message: "needs a path, methods or header rule"),
            ErrorCase(label: "HTTP block with only empty lists", permission: #"{"Action":"allow","HTTP":{"Methods":[],"Header":[]}}"#,
                      path: "\(p).http", message: "needs a path, methods or header rule"),
        ]

        @Test("invalid permissions are rejected with the field path", arguments: errorCases)
        func rejects(_ row: ErrorCase) {
            do {
                let permission = try l7DecodePermission(row.permission)
                Issue.record("decoded \(permission) instead of failing")
            } catch let error as ConfigError {
                #expect(error.source == l7Source)
                #expect(error.path == row.path)
                #expect(error.message.contains(row.message), "message: \(error.message)")
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }

        @Test("a source with both Action and Permissions is rejected")
        func actionAndPermissions() {
            let json = #"[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"a","Action":"allow","Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/"}}]}]}]"#
            let error = #expect(throws: ConfigError.self) {
                try IntentionsFile.decode(Data(json.utf8), source: l7Source)
            }
            #expect(error?.path == "[0].sources[0]")
            #expect(error?.message.contains("not both") == true)
        }

        struct SuccessCase: Sendable, CustomTestStringConvertible {
            var label: String
            var permission: String
            var expected: IntentionPermission
            var testDescription: String { label }
        }

        static func successCases() -> [SuccessCase] {
            typealias Rule = HTTPPermissionMatch.HeaderRule
            let prefix = IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/repository/")))
            let exact = IntentionPermission(action: .deny, http: HTTPPermissionMatch(path: .exact("/health")))
            let regex = IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .regex(l7Regex("/snap/[0-9]+"))))
            let methods = IntentionPermission(action: .allow, http: HTTPPermissionMatch(methods: ["GET", "HEAD"]))
            let header = IntentionPermission(action: .deny, http: HTTPPermissionMatch(headers: [
                Rule(name: "x-debug", condition: .exact("1"), invert: true),
            ]))
            let full = IntentionPermission(action: .allow, http: HTTPPermissionMatch(
                path: .prefix("/api/"), methods: ["PUT"],
                headers: [
                    Rule(name: "x-present", condition: .present),
                    Rule(name: "x-prefix", condition: .prefix("a")),
                    Rule(name: "x-suffix", condition: .suffix("z"), invert: true),
                    Rule(name: "x-regex", condition: .regex(l7Regex("v[0-9]+"))),
                ]))
            return [
                SuccessCase(label: "PathPrefix", permission: #"{"Action":"allow","HTTP":{"PathPrefix":"/repository/"}}"#, expected: prefix),
                SuccessCase(label: "path_prefix", permission: #"{"action":"allow","http":{"path_prefix":"/repository/"}}"#, expected: prefix),
                SuccessCase(label: "PathExact", permission: #"{"Action":"deny","HTTP":{"PathExact":"/health"}}"#, expected: exact),
                SuccessCase(label: "path_exact", permission: #"{"action":"deny","http":{"path_exact":"/health"}}"#, expected: exact),
                SuccessCase(label: "PathRegex", permission: #"{"Action":"allow","HTTP":{"PathRegex":"/snap/[0-9]+"}}"#, expected: regex),
                SuccessCase(label: "path_regex", permission: #"{"action":"allow","http":{"path_regex":"/snap/[0-9]+"}}"#, expected: regex),
                SuccessCase(label: "Methods", permission: #"{"Action":"allow","HTTP":{"Methods":["GET","HEAD"]}}"#, expected: methods),
                SuccessCase(label: "methods, lower-case values", permission: #"{"action":"allow","http":{"methods":["get","head"]}}"#, expected: methods),
                SuccessCase(label: "Action in capitals", permission: #"{"Action":"ALLOW","HTTP":{"Methods":["GET","HEAD"]}}"#, expected: methods),
                SuccessCase(label: "Header PascalCase", permission: #"{"Action":"deny","HTTP":{"Header":[{"Name":"X-Debug","Exact":"1","Invert":true}]}}"#, expected: header),
                SuccessCase(label: "header snake_case", permission: #"{"action":"deny","http":{"header":[{"name":"x-debug","exact":"1","invert":true}]}}"#, expected: header),
                SuccessCase(label: "null path fields are absent", permission: #"{"Action":"deny","HTTP":{"PathExact":"/health","PathPrefix":null,"PathRegex":null}}"#, expected: exact),
                SuccessCase(label: "every header condition", permission: #"""
                    {"Action":"allow","HTTP":{"PathPrefix":"/api/","Methods":["put"],"Header":[
                      {"Name":"X-Present","Present":true},
                      {"Name":"X-Prefix","Prefix":"a","Invert":false},
                      {"Name":"X-Suffix","Suffix":"z","Invert":true},
                      {"Name":"X-Regex","Regex":"v[0-9]+"}]}}
                    """#, expected: full),
            ]
        }

        @Test("valid permissions decode, in either key spelling", arguments: successCases())
        func decodes(_ row: SuccessCase) throws {
            #expect(try l7DecodePermission(row.permission) == row.expected)
        }

        @Test("a decoded PathRegex is a full match")
        func decodedRegexIsFullMatch() throws {
            let permission = try l7DecodePermission(#"{"Action":"allow","HTTP":{"PathRegex":"/snap/[0-9]+"}}"#)
            #expect(permission.http.matches(l7Request("GET", "/snap/12")))
            #expect(!permission.http.matches(l7Request("GET", "/snap/12/x")))
            #expect(!permission.http.matches(l7Request("GET", "x/snap/1")))
        }
    }
}
