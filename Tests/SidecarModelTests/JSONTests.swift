import Foundation
import Testing
import TestSupport
@testable import SidecarModel

/// The package's one JSON approach: `JSONValue` (decoded with Codable) in, `JSON` out.
/// Foundation's JSONSerialization is the independent parser that every document we write must
/// satisfy, and whose reading of our output must equal what we meant.
@Suite struct JSONTests {
    @Test("written strings escape what JSON requires and nothing else", arguments: [
        ("plain", #""plain""#),
        ("a\"b", #""a\"b""#),
        ("back\\slash", #""back\\slash""#),
        ("line\nbreak\r\t", #""line\nbreak\r\t""#),
        ("\u{01}\u{1f}", #""\u0001\u001f""#),
        ("/path/ü/🙂", #""/path/ü/🙂""#),
    ])
    func quoting(text: String, expected: String) throws {
        #expect(JSONText.quoted(text) == expected)
        let object = try JSONSerialization.jsonObject(with: Data("[\(expected)]".utf8)) as? [String]
        #expect(object == [text])
    }

    @Test("integers are written as Swift prints them: the edges, every power of ten and its neighbours, and seeded random values")
    func integers() {
        var values: [Int] = [0, 1, -1, 9, -9, 10, -10, Int.max, Int.min, Int.max - 1, Int.min + 1]
        var power = 1
        for _ in 0..<18 {
            power *= 10
            values += [power - 1, power, power + 1, -(power - 1), -power, -(power + 1)]
        }
        var random = SplitMix64(seed: 0x1D1617)
        for _ in 0..<5_000 {
            // Every magnitude, both signs (the bit pattern covers negatives).
            values.append(Int(bitPattern: UInt(random.next() >> (random.next() % 64))))
            values.append(Int(bitPattern: UInt(random.next())))
        }
        for value in values {
            var out: [UInt8] = Array("x".utf8) // appended after what is there
            JSONText.appendInteger(value, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == "x\(value)")
        }
    }

    /// The byte-wise rule the eight-byte test must agree with.
    static func needsEscape(_ byte: UInt8) -> Bool { byte < 0x20 || byte == 0x22 || byte == 0x5C }

    @Test("the eight-byte test: every byte value at every position among safe fillers, and random words")
    func eightByteTest() {
        // One expectation per group, not per word: a suite of tests runs beside this one.
        var wrong: [(value: Int, position: Int, filler: UInt8)] = []
        for filler: UInt8 in [0x20, 0x21, 0x23, 0x5B, 0x5D, 0x61, 0x7F, 0x80, 0xC3, 0xFF] {
            for position in 0..<8 {
                for value in 0...255 {
                    var bytes = [UInt8](repeating: filler, count: 8)
                    bytes[position] = UInt8(value)
                    let word = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    if JSONText.mayNeedEscape(word) != Self.needsEscape(UInt8(value)) { wrong.append((value, position, filler)) }
                }
            }
        }
        #expect(wrong.isEmpty, "\(wrong.prefix(5))")
        var random = SplitMix64(seed: 0xE5CA9E)
        var disagreements: [[UInt8]] = []
        // Bytes drawn mostly near the thresholds, so that borrows between them are exercised.
        let near: [UInt8] = [0x00, 0x01, 0x1F, 0x20, 0x21, 0x22, 0x23, 0x5B, 0x5C, 0x5D, 0x7F, 0x80, 0xFF]
        for _ in 0..<200_000 {
            let bytes = (0..<8).map { _ in random.next() % 3 == 0 ? UInt8(truncatingIfNeeded: random.next()) : near[Int(random.next() % 13)] }
            let word = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
            if JSONText.mayNeedEscape(word) != bytes.contains(where: Self.needsEscape) { disagreements.append(bytes) }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(5))")
    }

    @Test("quoting agrees with a scalar-by-scalar escaper on long strings, specials at every alignment")
    func quotingDifferential() {
        // One special among plain text, at every position of strings up to 40 bytes long.
        let specials: [Unicode.Scalar] = (0..<0x20).map { Unicode.Scalar(UInt8($0)) } + ["\"", "\\"]
        var wrong: [String] = []
        for length in 1...40 {
            for position in 0..<length {
                for special in specials {
                    var scalars = Array(repeating: Unicode.Scalar("a"), count: length)
                    scalars[position] = special
                    var text = ""
                    text.unicodeScalars.append(contentsOf: scalars)
                    if JSONText.quoted(text) != referenceJSONQuoted(text) { wrong.append(text) }
                }
            }
        }
        // Random strings up to 200 scalars: mostly plain and multi-byte, specials sparse.
        var random = SplitMix64(seed: 0x0A7E5)
        for _ in 0..<3_000 {
            var text = ""
            for _ in 0..<Int(random.next() % 200) {
                switch random.next() % 16 {
                case 0: text.unicodeScalars.append(specials[Int(random.next() % UInt64(specials.count))])
                case 1, 2: text.unicodeScalars.append(Unicode.Scalar(UInt32(0x80 + random.next() % 0x7000)) ?? "é")
                default: text.unicodeScalars.append(Unicode.Scalar(UInt8(0x20 + random.next() % 0x5F)))
                }
            }
            if JSONText.quoted(text) != referenceJSONQuoted(text) { wrong.append(text) }
        }
        #expect(wrong.isEmpty, "\(wrong.prefix(5).map { Array($0.unicodeScalars) })")
    }

    @Test("objects keep their order; pretty and compact forms mean the same")
    func ordering() throws {
        let document = JSON.object([("Z", .int(1)), ("A", .array([.bool(true), .null, .double(1.5)])),
                                    ("M", .object([])), ("E", .array([]))])
        #expect(document.serialized() == #"{"Z":1,"A":[true,null,1.5],"M":{},"E":[]}"#)
        let compact = try JSONSerialization.jsonObject(with: document.data) as? NSDictionary
        let pretty = try JSONSerialization.jsonObject(with: Data(document.serialized(pretty: true).utf8)) as? NSDictionary
        #expect(compact == pretty && compact?.count == 4)
    }

    @Test("generated documents survive a round trip through our writer, Foundation's parser and our reader")
    func roundTrip() throws {
        var random = SplitMix64(seed: 0x15_0_4)
        func string() -> String {
            let alphabet = Array("aZ09 _-/\\\"\n\t\u{0}\u{1f}é€🙂")
            return String((0..<Int(random.next() % 8)).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] })
        }
        func value(depth: Int) -> JSON {
            switch random.next() % (depth > 3 ? 5 : 7) {
            case 0: return .null
            case 1: return .bool(random.next() % 2 == 0)
            case 2: return .int(Int64(bitPattern: random.next()) >> Int64(random.next() % 64))
            case 3: return .double(Double(Int64(random.next() % 1_000_000)) / 64)
            case 4: return .string(string())
            case 5: return .array((0..<Int(random.next() % 4)).map { _ in value(depth: depth + 1) })
            default:
                var seen = Set<String>()
                return .object((0..<Int(random.next() % 4)).compactMap { _ in
                    let key = string()
                    return seen.insert(key).inserted ? (key, value(depth: depth + 1)) : nil
                })
            }
        }
        func sortedKeys(_ value: JSON) -> JSON {
            switch value {
            case .array(let items): return .array(items.map(sortedKeys))
            case .object(let fields): return .object(fields.sorted { $0.0 < $1.0 }.map { ($0.0, sortedKeys($0.1)) })
            case .double(let number) where number.rounded() == number && abs(number) < 1e15: return .int(Int64(number))
            default: return value
            }
        }
        for _ in 0..<2_000 {
            let document = JSON.array([value(depth: 0)])
            _ = try JSONSerialization.jsonObject(with: document.data)
            let read = try JSONValue.parse(document.data, source: "generated")
            #expect(JSON(read) == sortedKeys(document), "\(document.serialized())")
        }
    }

    @Test("field access on answers: exact names, numbers apart from booleans, nil for anything else")
    func fieldAccess() throws {
        let answer = try JSONValue.parse(Data(#"{"SecretID":"s","n":3,"f":2.5,"b":true,"o":{"k":"v"},"nul":null}"#.utf8), source: "t")
        #expect(answer["SecretID"]?.stringValue == "s")
        #expect(answer["secretid"] == nil, "answers use Consul's exact field names")
        #expect(answer["n"]?.doubleValue == 3 && answer["f"]?.doubleValue == 2.5)
        #expect(answer["b"]?.doubleValue == nil, "a boolean is not a number")
        #expect(answer["o"]?["k"]?.stringValue == "v" && answer["o"]?.objectValue?.count == 1)
        #expect(answer["nul"] == .null && answer["nul"]?.stringValue == nil)
        #expect(answer["n"]?["k"] == nil && JSONValue.string("x")["x"] == nil)
        #expect(JSONValue.parsed(Data("{".utf8)) == nil && JSONValue.parsed(Data("[1]".utf8)) == .array([.integer(1)]))
    }
}
