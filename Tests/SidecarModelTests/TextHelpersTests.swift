import Foundation // the independent implementation these helpers replaced, as the oracle
import Testing
import TestSupport
@testable import SidecarModel

/// The helpers that replaced Foundation's ICU-linked string APIs must agree with Foundation on
/// everything the sidecar feeds them: checked case by case and against random inputs.
@Suite struct TextHelpersTests {
    /// Random text drawn from bytes that matter to each helper, some of them multi-byte.
    static func randomText(_ random: inout SplitMix64, alphabet: [String], maxLength: Int = 24) -> String {
        let length = Int(random.next() % UInt64(maxLength + 1))
        return (0..<length).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] }.joined()
    }

    static let decodeAlphabet = ["%", "%", "2", "5", "f", "F", "a", "G", "0", "c", "3", "A", "9", "8", "+", "/", "é", " ", "x", "E", "B", "D"]

    /// Where they differ on purpose: Foundation on Linux sometimes repairs decoded bytes that are
    /// not UTF-8 with U+FFFD; ours refuses them (nil), as SPIFFE IDs and the dev agent want.
    @Test("decode agrees with Foundation's removingPercentEncoding on 20,000 random strings")
    func decodeDifferential() {
        var random = SplitMix64(seed: 0xDEC0DE)
        var decodedSome = 0, repairedByFoundation = 0
        for _ in 0..<20_000 {
            let text = Self.randomText(&random, alphabet: Self.decodeAlphabet)
            let ours = PercentEncoding.decode(text)
            let foundation = text.removingPercentEncoding
            if let foundation, foundation.unicodeScalars.contains("\u{FFFD}") {
                repairedByFoundation += 1
                #expect(ours == nil, "\(text.debugDescription)")
            } else {
                #expect(ours == foundation, "\(text.debugDescription)")
            }
            if ours != nil && ours != text { decodedSome += 1 }
        }
        #expect(decodedSome > 300) // the alphabet really produces escapes
        #expect(repairedByFoundation > 0) // and invalid UTF-8
    }

    @Test("decode", arguments: [
        ("a%20b", "a b"), ("%2F", "/"), ("%2f", "/"), ("100%25", "100%"), ("%C3%A9", "é"), ("", ""),
        ("plain", "plain"), ("+", "+"),
    ] as [(String, String)])
    func decodeCases(text: String, expected: String) {
        #expect(PercentEncoding.decode(text) == expected)
    }

    @Test("decode refuses broken escapes and invalid UTF-8", arguments: ["%", "%2", "%G0", "a%zz", "%C3", "%FF", "%C3%28", "%ED%A0%80"])
    func decodeRefuses(text: String) {
        #expect(PercentEncoding.decode(text) == nil)
        #expect(text.removingPercentEncoding == nil)
    }

    @Test("decode with a byte filter refuses unescaped bytes outside it")
    func decodeFilter() {
        #expect(PercentEncoding.decode("a%2Fb", accepting: PercentEncoding.isSegmentCharacter) == "a/b")
        #expect(PercentEncoding.decode("a/b", accepting: PercentEncoding.isSegmentCharacter) == nil)
        #expect(PercentEncoding.decode("a b", accepting: PercentEncoding.isSegmentCharacter) == nil)
    }

    /// Foundation's `urlPathAllowed` has no ";" (RFC 3986 allows it in a segment): the Consul
    /// client's segments keep that choice and encode it, SPIFFE IDs keep ";" (their pchar).
    @Test("encodePathSegment agrees with Foundation (urlPathAllowed without / ? # %) on 20,000 random strings")
    func encodeDifferential() {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?#%")
        let consulSegment = { (byte: UInt8) in byte != UInt8(ascii: ";") && PercentEncoding.isSegmentCharacter(byte) }
        let alphabet = ["a", "Z", "0", "-", ".", "_", "~", "!", "$", "&", "'", "(", ")", "*", "+", ",", ";", "=", ":", "@",
                        "/", "?", "#", "%", " ", "\"", "<", ">", "[", "]", "\\", "^", "`", "{", "|", "}", "é", "日", "\u{7F}", "\n"]
        var random = SplitMix64(seed: 0xE4C0DE)
        for _ in 0..<20_000 {
            let text = Self.randomText(&random, alphabet: alphabet)
            let ours = PercentEncoding.encodePathSegment(text, keeping: consulSegment)
            #expect(ours == text.addingPercentEncoding(withAllowedCharacters: allowed), "\(text.debugDescription)")
            #expect(PercentEncoding.decode(ours) == text)
            let spiffe = PercentEncoding.encodePathSegment(text)
            #expect(spiffe == ours.replacing("%3B", with: ";"))
            #expect(PercentEncoding.decode(spiffe, accepting: PercentEncoding.isSegmentCharacter) == text)
        }
    }

    @Test("trimmingWhitespace agrees with Foundation's whitespacesAndNewlines on 20,000 random strings")
    func trimDifferential() {
        let alphabet = [" ", "\t", "\n", "\r", "\r\n", "\u{A0}", "\u{2003}", "\u{B}", "\u{C}", "a", "b", "7", "é", "-"]
        var random = SplitMix64(seed: 0x7819)
        for _ in 0..<20_000 {
            let text = Self.randomText(&random, alphabet: alphabet, maxLength: 10)
            #expect(text.trimmingWhitespace() == text.trimmingCharacters(in: .whitespacesAndNewlines), "\(text.debugDescription)")
        }
        #expect(Substring("  42 \n").trimmingWhitespace() == "42")
        #expect("   ".trimmingWhitespace() == "")
    }

    @Test("FilePath.parent and join", arguments: [
        ("/run/sidecar.sock", "/run"), ("/sidecar.sock", "/"), ("sidecar.sock", "."), ("a/b/c", "a/b"), ("/a/b/", "/a/b"),
    ] as [(String, String)])
    func parent(path: String, expected: String) {
        #expect(FilePath.parent(of: path) == expected)
    }

    @Test("FilePath.join puts exactly one slash between directory and name")
    func join() {
        #expect(FilePath.join("/etc/ca", "root.pem") == "/etc/ca/root.pem")
        #expect(FilePath.join("/etc/ca/", "root.pem") == "/etc/ca/root.pem")
        #expect(FilePath.join("ca", "sub/root.pem") == "ca/sub/root.pem")
    }

    @Test("oneDecimal agrees with String(format: \"%.1f\") away from exact ties, and never traps")
    func oneDecimal() {
        var random = SplitMix64(seed: 0x1D5)
        for _ in 0..<20_000 {
            let value = Double(Int64(random.next() % 2_000_001) - 1_000_000) / 1000 + 0.0001
            #expect(value.oneDecimal == String(format: "%.1f", value), "\(value)")
        }
        #expect(30.0.oneDecimal == "30.0")
        #expect(0.0.oneDecimal == "0.0")
        #expect((-1.25).oneDecimal == "-1.3")
        #expect(Double.infinity.oneDecimal == "inf")
        #expect(Double.nan.oneDecimal == "nan")
        #expect(1e300.oneDecimal == "1e+300")
    }

    @Test("FileSystemErrorText names the errno of a failed file read")
    func fileErrorText() {
        let missing = "/nonexistent-\(UInt64.random(in: 0...UInt64.max))"
        #expect(throws: (any Error).self) { try FileManager.default.contentsOfDirectory(atPath: missing) }
        do {
            _ = try FileManager.default.contentsOfDirectory(atPath: missing)
        } catch {
            #expect(FileSystemErrorText.describe(error) == "No such file or directory")
        }
        #expect(FileSystemErrorText.describe(POSIXError(.EACCES)) == "Permission denied")
    }
}
