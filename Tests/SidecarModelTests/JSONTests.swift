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
