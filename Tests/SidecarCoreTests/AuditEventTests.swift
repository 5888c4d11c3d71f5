import Foundation
import Testing
import TestFixtures
import TestSupport
@testable import SidecarCore
@testable import SidecarModel

private func parseLine(_ line: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
    return try #require(object as? [String: Any], sourceLocation: sourceLocation)
}

@Suite("AuditEvent")
struct AuditEventTests {
    static let documentedOrder = [
        "ts", "schema_version", "event", "listener", "peer_addr", "source", "source_serial", "destination", "decision", "reason",
        "bytes_in", "bytes_out", "duration_ms",
    ]

    static func fullEvent() -> AuditEvent {
        var event = AuditEvent(kind: .connectionClosed, listener: "public:0.0.0.0:21000",
                               peerAddress: "10.0.0.7:53122",
                               source: "spiffe://td.consul/ns/default/dc/dc1/svc/backup-agent",
                               sourceSerial: "4a:1f:00:ff", destination: "storage", decision: "allow",
                               reason: "intention default/default/backup-agent -> default/storage (precedence 9)",
                               bytesIn: 1234, bytesOut: 0, durationMs: 57)
        event.time = Date(timeIntervalSince1970: 1_700_000_000.25)
        return event
    }

    @Test("a full event has every documented field with the right JSON type")
    func fullFields() throws {
        let event = Self.fullEvent()
        let line = event.jsonLine
        let object = try parseLine(line)
        #expect(Set(object.keys) == Set(Self.documentedOrder))
        #expect(object["ts"] as? String == "2023-11-14T22:13:20.250Z")
        #expect(object["event"] as? String == "connection_closed")
        #expect(object["listener"] as? String == "public:0.0.0.0:21000")
        #expect(object["peer_addr"] as? String == "10.0.0.7:53122")
        #expect(object["source"] as? String == "spiffe://td.consul/ns/default/dc/dc1/svc/backup-agent")
        #expect(object["source_serial"] as? String == "4a:1f:00:ff")
        #expect(object["destination"] as? String == "storage")
        #expect(object["decision"] as? String == "allow")
        #expect(object["reason"] as? String == event.reason)
        #expect((object["bytes_in"] as? NSNumber)?.intValue == 1234)
        #expect((object["bytes_out"] as? NSNumber)?.intValue == 0)
        #expect((object["duration_ms"] as? NSNumber)?.intValue == 57)
        // Numbers are JSON numbers, not strings.
        #expect(object["bytes_in"] is NSNumber)
        #expect(!(object["bytes_in"] is String))
    }

    @Test("fields come in the documented fixed order, one line, no trailing newline")
    func fieldOrder() {
        let line = Self.fullEvent().jsonLine
        #expect(!line.contains("\n"))
        #expect(line.hasPrefix("{\"ts\":\""))
        #expect(line.hasSuffix("}"))
        let positions = Self.documentedOrder.map { key -> String.Index? in
            line.range(of: "\"\(key)\":")?.lowerBound
        }
        #expect(positions.allSatisfy { $0 != nil })
        let found = positions.compactMap { $0 }
        #expect(found == found.sorted())
    }

    @Test("nil fields are omitted, zero is kept")
    func omitsNil() throws {
        let minimal = AuditEvent(kind: .handshakeRejected, listener: "public")
        let object = try parseLine(minimal.jsonLine)
        #expect(Set(object.keys) == ["ts", "schema_version", "event", "listener"])
        #expect((object["schema_version"] as? NSNumber)?.intValue == AuditEvent.schemaVersion)
        #expect(!minimal.jsonLine.contains("null"))

        let partial = AuditEvent(kind: .upstreamFailed, listener: "upstream:storage", destination: "storage",
                                 reason: "connection refused", bytesOut: 0)
        let partialObject = try parseLine(partial.jsonLine)
        #expect(Set(partialObject.keys) == ["ts", "schema_version", "event", "listener", "destination", "reason", "bytes_out"])
        #expect((partialObject["bytes_out"] as? NSNumber)?.intValue == 0)
    }

    @Test("event names are the documented strings", arguments: [
        (AuditEvent.Kind.handshakeRejected, "handshake_rejected"),
        (.authorization, "authorization"),
        (.upstreamConnected, "upstream_connected"),
        (.upstreamFailed, "upstream_failed"),
        (.localConnectFailed, "local_connect_failed"),
        (.connectionClosed, "connection_closed"),
    ])
    func eventNames(kind: AuditEvent.Kind, name: String) throws {
        let object = try parseLine(AuditEvent(kind: kind, listener: "l").jsonLine)
        #expect(object["event"] as? String == name)
    }

    @Test("strings are escaped so the line parses back to the same text", arguments: [
        "plain",
        "say \"hi\"",
        "back\\slash",
        "two\nlines",
        "cr\rlf\r\n",
        "tab\there",
        "nul\u{0}byte",
        "bell\u{7}and\u{1F}unit",
        "del\u{7F}",
        "unicode é 日本 🚀",
        "line\u{2028}separator",
        "slash / and </script>",
        "",
    ])
    func escaping(text: String) throws {
        let event = AuditEvent(kind: .authorization, listener: text, source: text, reason: text)
        let line = event.jsonLine
        #expect(!line.contains("\n"))
        #expect(!line.contains("\r"))
        #expect(!line.unicodeScalars.contains { $0.value < 0x20 })
        let object = try parseLine(line)
        // No listener has an empty name: lifecycle lines leave it out.
        #expect(object["listener"] as? String == (text.isEmpty ? nil : text))
        #expect(object["source"] as? String == text)
        #expect(object["reason"] as? String == text)
    }

    @Test("generated hostile strings in every text field: one line, the same text back, no key added (differential)")
    func generatedHostileStrings() throws {
        var random = SplitMix64(seed: 0xA0D17)
        func scalar() -> Unicode.Scalar {
            switch random.next() % 4 {
            case 0: return Unicode.Scalar(UInt8(random.next() % 0x20)) // control
            case 1: return ["\"", "\\", "{", "}", ":", ",", "/", "\u{7F}", "\u{2028}"].map { Unicode.Scalar($0)! }[Int(random.next() % 9)]
            case 2: return Unicode.Scalar(UInt8(0x20 + random.next() % 0x5F))
            default:
                let value = UInt32(0x80 + random.next() % (0x10FFFF - 0x80))
                return Unicode.Scalar(value) ?? "\u{FFFD}" // surrogates are not scalars
            }
        }
        for _ in 0..<2_000 {
            var text = ""
            for _ in 0..<Int(random.next() % 24) { text.unicodeScalars.append(scalar()) }
            #expect(AuditEvent.quote(text) == referenceJSONQuoted(text), "\(Array(text.unicodeScalars))")
            var event = AuditEvent(kind: .httpRequest, listener: "public", peerAddress: text, source: text, sourceSerial: text,
                                   destination: text, decision: text, reason: text)
            event.method = text
            event.path = text
            let line = event.jsonLine
            #expect(!line.unicodeScalars.contains { $0.value < 0x20 }, "one line: \(line)")
            let object = try parseLine(line)
            #expect(Set(object.keys) == ["ts", "schema_version", "event", "listener", "peer_addr", "source", "source_serial",
                                          "destination", "method", "path", "decision", "reason"], "\(line)")
            for key in ["peer_addr", "source", "source_serial", "destination", "method", "path", "decision", "reason"] {
                #expect(object[key] as? String == text, "\(key) in \(line)")
            }
        }
    }

    @Test("escape forms for quotes, backslash and control characters")
    func escapeForms() {
        #expect(AuditEvent.quote("a\"b") == #""a\"b""#)
        #expect(AuditEvent.quote("a\\b") == #""a\\b""#)
        #expect(AuditEvent.quote("a\nb\rc\td") == #""a\nb\rc\td""#)
        #expect(AuditEvent.quote("\u{0}\u{1}\u{1B}\u{1F}") == #""\u0000\u0001\u001b\u001f""#)
        #expect(AuditEvent.quote(" ~é") == "\" ~é\"")
    }

    @Test("ts is RFC 3339 UTC with milliseconds and a Z suffix", arguments: [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.0, "2023-11-14T22:13:20.000Z"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500Z"),
        (1_700_000_000.125, "2023-11-14T22:13:20.125Z"),
        (951_782_400.75, "2000-02-29T00:00:00.750Z"),
    ])
    func timestamp(seconds: Double, expected: String) throws {
        var event = AuditEvent(kind: .authorization, listener: "l")
        event.time = Date(timeIntervalSince1970: seconds)
        #expect(Timestamp.rfc3339(event.time) == expected)
        #expect(try parseLine(event.jsonLine)["ts"] as? String == expected)
    }

    @Test("ts of the current time has the RFC 3339 millisecond shape and parses back")
    func timestampShape() throws {
        let before = Date()
        let event = AuditEvent(kind: .authorization, listener: "l")
        let ts = try #require(try parseLine(event.jsonLine)["ts"] as? String)
        let pattern = #/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/#
        #expect(ts.wholeMatch(of: pattern) != nil, "\(ts)")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let parsed = try #require(formatter.date(from: ts))
        #expect(abs(parsed.timeIntervalSince(before)) < 60)
    }

    @Test("memory and fan-out sinks keep events in order")
    func sinks() {
        let first = MemoryAuditSink(), second = MemoryAuditSink()
        let fanOut = AuditFanOut([first, second])
        let a = AuditEvent(kind: .authorization, listener: "a")
        let b = AuditEvent(kind: .connectionClosed, listener: "b")
        fanOut.record(a)
        fanOut.record(b)
        #expect(first.events == [a, b])
        #expect(second.events == [a, b])
    }

    @Test("JSON lines file sink appends one parseable line per event")
    func fileSink() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("audit-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try JSONLinesAuditSink.file(at: path)
        sink.record(AuditEvent(kind: .authorization, listener: "one", reason: "multi\nline"))
        sink.record(AuditEvent(kind: .connectionClosed, listener: "two", bytesIn: 5))
        sink.flush()
        // Reopening appends rather than truncating.
        let reopened = try JSONLinesAuditSink.file(at: path)
        reopened.record(AuditEvent(kind: .upstreamFailed, listener: "three"))
        reopened.flush()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasSuffix("\n"))
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        // Each sink starts with an audit_log_opened line; the second continues the first's chain.
        #expect(lines.count == 5)
        let objects = try lines.map { try parseLine(String($0)) }
        #expect(objects.map { $0["listener"] as? String } == [nil, "one", "two", nil, "three"])
        #expect(objects.map { $0["event"] as? String }
                == ["audit_log_opened", "authorization", "connection_closed", "audit_log_opened", "upstream_failed"])
        #expect(objects[0]["prev_hash"] as? String == AuditChain.genesis, "a new file starts a chain")
        let verdict = AuditChain.verify(files: [(path, Array(text.utf8))])
        #expect(verdict.intact && verdict.lines == 5 && verdict.restarts.isEmpty, "the chain runs unbroken across the two sinks: \(verdict)")
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o640)
    }

    @Test("handshake_ms has exactly three decimals, rounded", arguments: [
        (1.5, "1.500"), (0.0004, "0.000"), (0.0005, "0.001"), (12.3456, "12.346"), (999.9996, "1000.000"), (0, "0.000"),
    ])
    func handshakeMilliseconds(value: Double, expected: String) throws {
        var event = AuditEvent(kind: .authorization, listener: "public")
        event.handshakeMs = value
        #expect(event.jsonLine.hasSuffix(",\"handshake_ms\":\(expected)}"))
        #expect(String(format: "%.3f", value) == expected || value == 0.0005, "matches what printf would print")
    }

    @Test("the file sink keeps every line whole under concurrent writers, each writer's lines in order, and flush waits for them")
    func fileSinkConcurrent() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("audit-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try JSONLinesAuditSink.file(at: path)
        let writers = 8, perWriter = 5_000
        await withTaskGroup(of: Void.self) { group in
            for writer in 0..<writers {
                group.addTask {
                    for index in 0..<perWriter {
                        sink.record(AuditEvent(kind: .connectionClosed, listener: "w\(writer)", reason: String(repeating: "x", count: index % 300),
                                               bytesIn: index))
                    }
                }
            }
        }
        sink.flush()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n").dropFirst() // audit_log_opened
        #expect(lines.count == writers * perWriter)
        let verdict = AuditChain.verify(files: [(path, Array(text.utf8))])
        #expect(verdict.intact, "\(verdict.breaks)")
        var next = [String: Int]()
        for line in lines {
            let object = try parseLine(String(line))
            let writer = try #require(object["listener"] as? String)
            let index = try #require((object["bytes_in"] as? NSNumber)?.intValue)
            #expect(index == next[writer, default: 0], "writer \(writer) out of order")
            next[writer] = index + 1
        }
    }

    /// deploy/audit-schema.md, the schema operators build parsers from, against what the code
    /// writes: every field (with its JSON type) and every event kind, no more, no less.
    @Test("deploy/audit-schema.md documents exactly the fields and events the sidecar writes, with their types")
    func schemaDocument() throws {
        let text = try String(contentsOf: TestCertificates.repositoryRoot.appendingPathComponent("deploy/audit-schema.md"), encoding: .utf8)
        func table(after heading: String) -> [[String]] {
            let section = text.components(separatedBy: heading)[1].components(separatedBy: "\n## ")[0]
            return section.split(separator: "\n").filter { $0.hasPrefix("| `") }.map { row in
                row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            }
        }
        let documented = Dictionary(uniqueKeysWithValues: table(after: "## Fields").map { ($0[0].trimmingCharacters(in: CharacterSet(charactersIn: "`")), $0[1]) })
        // One event with every field set, sealed as the sink writes it.
        var event = AuditEvent(kind: .connectionClosed, listener: "public", peerAddress: "a", source: "s", sourceSerial: "1",
                               destination: "d", decision: "allow", reason: "r", bytesIn: 1, bytesOut: 2, durationMs: 3,
                               method: "GET", path: "/")
        event.connectionID = "0-1"
        event.muxConnectionID = "0-2"
        event.requestTarget = "/x"
        event.handshakeMs = 1.5
        event.tlsResumed = true
        event.muxStream = 3
        event.caller = LocalCaller(uid: 1, gid: 2, pid: 3)
        event.identity = "spiffe://x"
        event.serial = "01"
        event.previousSerial = "02"
        event.notAfter = Date()
        event.roots = 1
        event.intentions = 4
        event.revoked = 0
        var head = AuditChain.genesis
        var sealed: [UInt8] = []
        AuditChain.seal(Array((event.jsonLine + "\n").utf8), head: &head, into: &sealed)
        let object = try parseLine(String(decoding: sealed.dropLast(), as: UTF8.self))
        var written = Set(object.keys)
        written.insert("caller_exe") // read from /proc when the process exists; documented with the other caller fields
        #expect(written == Set(documented.keys), "written but undocumented: \(written.subtracting(documented.keys)); documented but never written: \(Set(documented.keys).subtracting(written))")
        // The JSON type as written: what follows `"field":` in the line.
        let line = String(decoding: sealed.dropLast(), as: UTF8.self)
        for field in object.keys {
            let value = try #require(line.components(separatedBy: "\"\(field)\":").dropFirst().first)
            let raw = value.prefix { $0 != "," && $0 != "}" }
            let type = raw.hasPrefix("\"") ? "string" : raw == "true" || raw == "false" ? "boolean" : raw.contains(".") ? "number" : "integer"
            #expect(documented[field] == type, "\(field): documented \(documented[field] ?? "-"), written as \(type)")
        }
        let events = Set(table(after: "## Events").map { $0[0].trimmingCharacters(in: CharacterSet(charactersIn: "`")) })
        #expect(events == Set(AuditEvent.Kind.allCases.map(\.rawValue)))
    }
}
