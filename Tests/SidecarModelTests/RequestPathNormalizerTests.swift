import Testing
import TestSupport
@testable import SidecarModel

/// The request-target normaliser in front of every L7 decision (HTTP/1.1 and HTTP/2).
@Suite("Request path normaliser")
struct RequestPathNormalizerTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var target: String
        /// nil: refused.
        var expected: String?
        var options = PathNormalization()
        var testDescription: String { "\(target) -> \(expected ?? "refused")" }
    }

    static let merge = PathNormalization(mergeSlashes: true)
    static let keep = PathNormalization(escapedSlashes: .keep)
    static let unescape = PathNormalization(escapedSlashes: .unescape)

    static let cases: [Case] = [
        // unchanged
        Case(target: "/", expected: "/"),
        Case(target: "/repository/snap-1", expected: "/repository/snap-1"),
        Case(target: "/a/b/", expected: "/a/b/"),
        Case(target: "/a?b=1", expected: "/a?b=1"),
        Case(target: "/a?", expected: "/a?"),
        Case(target: "/data/0123abcd", expected: "/data/0123abcd"),
        Case(target: "/a:b@c!$&'()*+,;=", expected: "/a:b@c!$&'()*+,;="),
        Case(target: "/A/B", expected: "/A/B"),
        // dot segments (RFC 3986 §5.2.4), clamped at the root
        Case(target: "/repository/../outside", expected: "/outside"),
        Case(target: "/repository/./x", expected: "/repository/x"),
        Case(target: "/./admin", expected: "/admin"),
        Case(target: "/x/../admin", expected: "/admin"),
        Case(target: "/../x", expected: "/x"),
        Case(target: "/a/b/../../../../c", expected: "/c"),
        Case(target: "/a/b/..", expected: "/a/"),
        Case(target: "/a/b/.", expected: "/a/b/"),
        Case(target: "/..", expected: "/"),
        Case(target: "/.", expected: "/"),
        Case(target: "/a/..b/c", expected: "/a/..b/c"),
        Case(target: "/a/.b", expected: "/a/.b"),
        Case(target: "/a/.../b", expected: "/a/.../b"),
        Case(target: "/a//../b", expected: "/a/b"),
        // encoded dots and other unreserved characters are decoded
        Case(target: "/repository/%2e%2e/outside", expected: "/outside"),
        Case(target: "/repository/%2E%2E/outside", expected: "/outside"),
        Case(target: "/repository/.%2e/outside", expected: "/outside"),
        Case(target: "/%2e/admin", expected: "/admin"),
        Case(target: "/%61dmin", expected: "/admin"),
        Case(target: "/%41%5a%30%39%2d%2e%5f%7e", expected: "/AZ09-._~"),
        // other escapes are kept exactly, hex case included
        Case(target: "/a%20b", expected: "/a%20b"),
        Case(target: "/a%3Fb", expected: "/a%3Fb"),
        Case(target: "/a%3fb", expected: "/a%3fb"),
        Case(target: "/%252e%252e/x", expected: "/%252e%252e/x"),
        Case(target: "/%c0%ae%c0%ae/x", expected: "/%c0%ae%c0%ae/x"),
        Case(target: "/%25", expected: "/%25"),
        // the query is never touched
        Case(target: "/p?q=/../x", expected: "/p?q=/../x"),
        Case(target: "/p?%2e%2e", expected: "/p?%2e%2e"),
        Case(target: "/a/../b?x=%2F", expected: "/b?x=%2F"),
        Case(target: "/p?a?b", expected: "/p?a?b"),
        // slashes
        Case(target: "//admin", expected: "//admin"),
        Case(target: "//admin", expected: "/admin", options: merge),
        Case(target: "/a//b///c//", expected: "/a/b/c/", options: merge),
        Case(target: "///", expected: "/", options: merge),
        Case(target: "/a//b?x=//", expected: "/a/b?x=//", options: merge),
        // encoded slashes
        Case(target: "/repository/x%2F..%2F..%2Fsecret", expected: nil),
        Case(target: "/a%2fb", expected: nil),
        Case(target: "/a%5Cb", expected: nil),
        Case(target: "/a%2Fb", expected: "/a%2Fb", options: keep),
        Case(target: "/a%2f..%2fb", expected: "/a%2f..%2fb", options: keep),
        Case(target: "/a%2Fb", expected: "/a/b", options: unescape),
        Case(target: "/repository/x%2F..%2F..%2Fsecret", expected: "/secret", options: unescape),
        Case(target: "/a%5C..%5Cadmin", expected: "/admin", options: unescape),
        // refused
        Case(target: "/a#frag", expected: nil),
        Case(target: "/a?b#frag", expected: nil),
        Case(target: "/a\\..\\admin", expected: nil),
        Case(target: "/a\\b", expected: nil),
        Case(target: "/a%00", expected: nil),
        Case(target: "/a%", expected: nil),
        Case(target: "/a%2", expected: nil),
        Case(target: "/a%zz", expected: nil),
        Case(target: "/a%%32%65", expected: nil),
        Case(target: "/repository/..;/outside", expected: nil),
        Case(target: "/repository/.;x/outside", expected: nil),
        Case(target: "/repository/..%3B/outside", expected: nil),
        Case(target: "/repository/..%3b/outside", expected: nil),
        Case(target: "/repository/%2e%2e;/outside", expected: nil),
        Case(target: "/a b", expected: nil),
        Case(target: "/a\"b", expected: nil),
        Case(target: "/a<b>", expected: nil),
        Case(target: "/a{b}", expected: nil),
        Case(target: "/a|b", expected: nil),
        Case(target: "/a^b", expected: nil),
        Case(target: "/a`b", expected: nil),
        Case(target: "/a[b]", expected: nil),
        Case(target: "/caf\u{e9}", expected: nil),
        Case(target: "/a\u{7f}", expected: nil),
        Case(target: "relative", expected: nil),
        Case(target: "", expected: nil),
        Case(target: "*", expected: nil),
        Case(target: "?x", expected: nil),
        Case(target: "/a?b c", expected: nil),
    ]

    @Test("normalises or refuses", arguments: cases)
    func normalize(_ row: Case) {
        switch RequestPathNormalizer.normalize(row.target, row.options) {
        case .success(let normalized):
            #expect(normalized.target == row.expected, "refusal expected, got \(normalized.target)")
        case .failure(let refusal):
            #expect(row.expected == nil, "refused: \(refusal.reason)")
        }
    }

    @Test("the path excludes the query; the target puts it back")
    func pathAndQuery() throws {
        let normalized = try RequestPathNormalizer.normalize("/a/./b?x=1&y", PathNormalization()).get()
        #expect(normalized.path == "/a/b")
        #expect(normalized.query == "x=1&y")
        #expect(normalized.target == "/a/b?x=1&y")
        #expect(try RequestPathNormalizer.normalize("/a", PathNormalization()).get().query == nil)
        #expect(try RequestPathNormalizer.normalize("/a?", PathNormalization()).get().query == "")
    }

    @Test("refusals say why", arguments: [
        ("/a#f", "fragment"), ("/a\\b", "backslash"), ("/%00", "NUL"), ("/%zz", "malformed percent-encoding"),
        ("/%2F", "encoded slash"), ("/..;/x", "dot segment with parameters"), ("/a|b", "'|'"), ("x", "does not begin with /"),
    ])
    func refusalReasons(_ target: String, _ fragment: String) {
        guard case .failure(let refusal) = RequestPathNormalizer.normalize(target, PathNormalization()) else {
            Issue.record("\(target) was not refused")
            return
        }
        #expect(refusal.reason.contains(fragment), "\(refusal.reason)")
    }

    /// Generated targets from pieces attackers combine: normalising is idempotent, the result
    /// never has a dot segment, an encoded unreserved character or a character outside the
    /// path alphabet, and whatever the options, it starts with "/".
    @Test("generated targets: idempotent, no dot segments left", arguments: [PathNormalization(), merge, keep, unescape])
    func generated(_ options: PathNormalization) {
        let pieces = ["/", "a", ".", "..", "%2e", "%2E", "%2f", "%5c", "//", "%41", "%25", ";", "..;", "b", "%7e", "?", "=", "~", "%3b"]
        var generator = SplitMix64(seed: 0x5eed)
        var accepted = 0
        for _ in 0..<4000 {
            var target = "/"
            for _ in 0..<Int(generator.next() % 8) { target += pieces[Int(generator.next() % UInt64(pieces.count))] }
            guard case .success(let once) = RequestPathNormalizer.normalize(target, options) else { continue }
            accepted += 1
            let twice = RequestPathNormalizer.normalize(once.target, options)
            #expect(twice == .success(once), "not idempotent: \(target) -> \(once.target) -> \(twice)")
            let segments = once.path.split(separator: "/", omittingEmptySubsequences: false)
            #expect(!segments.contains(".") && !segments.contains(".."), "\(target) -> \(once.path)")
            #expect(once.path.hasPrefix("/"))
            let lowered = once.path.lowercased()
            for encoded in ["%2e", "%41", "%7e", "%5f", "%2d"] { #expect(!lowered.contains(encoded), "\(target) -> \(once.path)") }
            if options.mergeSlashes { #expect(!once.path.contains("//")) }
        }
        #expect(accepted > 1000, "the generator should mostly make acceptable targets (\(accepted))")
    }
}
