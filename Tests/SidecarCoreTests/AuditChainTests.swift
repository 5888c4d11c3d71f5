import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
@testable import SidecarModel

/// The audit log's hash chain: sealing by the sink, and `audit verify`'s judgement of every
/// way a file can be tampered with.
@Suite("Audit hash chain")
struct AuditChainTests {
    /// A chained log of `count` connection lines, as the sink writes it, one string per line.
    static func chain(_ count: Int, from head: String = AuditChain.genesis) -> (lines: [String], head: String) {
        var head = head
        var batch: [UInt8] = []
        for index in 0..<count {
            var event = AuditEvent(kind: .connectionClosed, listener: "public", source: "spiffe://td/ns/default/dc/dc1/svc/s\(index)",
                                   bytesIn: index)
            event.time = Date(timeIntervalSince1970: 1_800_000_000 + Double(index))
            event.connectionID = "abcd0123-\(index)"
            batch += Array((event.jsonLine + "\n").utf8)
        }
        var out: [UInt8] = []
        AuditChain.seal(batch, head: &head, into: &out)
        let text = String(decoding: out, as: UTF8.self)
        return (text.split(separator: "\n").map(String.init), head)
    }

    static func file(_ lines: [String], name: String = "audit.log") -> (name: String, bytes: [UInt8]) {
        (name, Array(lines.map { $0 + "\n" }.joined().utf8))
    }

    static func brokenAt(_ verdict: AuditChain.Verdict) -> AuditChain.Location? {
        verdict.breaks.first?.location
    }

    @Test("sealed lines are JSON objects ending in prev_hash, each naming the sha256 of the line before")
    func sealing() throws {
        let (lines, head) = Self.chain(20)
        var previous = AuditChain.genesis
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(object["prev_hash"] as? String == previous)
            #expect(line.hasSuffix("\"prev_hash\":\"\(previous)\"}"))
            let digest = SHA256Digest()
            digest.update(Array(line.utf8))
            previous = digest.finalizeHex()
        }
        #expect(head == previous, "the head is the last line's hash")
        #expect(AuditChain.verify(files: [Self.file(lines)]) == .init(lines: 20, head: head, startsWith: AuditChain.genesis))
    }

    @Test("a batch is sealed the same however it is split into writes")
    func batching() {
        let whole = Self.chain(30)
        let first = Self.chain(0)
        var head = first.head
        var out: [UInt8] = []
        var lines: [String] = []
        for index in 0..<30 {
            var event = AuditEvent(kind: .connectionClosed, listener: "public", source: "spiffe://td/ns/default/dc/dc1/svc/s\(index)",
                                   bytesIn: index)
            event.time = Date(timeIntervalSince1970: 1_800_000_000 + Double(index))
            event.connectionID = "abcd0123-\(index)"
            out.removeAll()
            AuditChain.seal(Array((event.jsonLine + "\n").utf8), head: &head, into: &out)
            lines.append(String(decoding: out.dropLast(), as: UTF8.self))
        }
        #expect(lines == whole.lines && head == whole.head)
    }

    @Test("every single-line edit, removal, insertion or swap is named at the line after it", arguments: 0..<12)
    func tampering(at index: Int) {
        let (lines, _) = Self.chain(12)
        var edited = lines
        // A changed value of the same length (bytes_in 1 -> 9, or a letter in the source).
        edited[index] = edited[index].replacingOccurrences(of: "svc/s\(index)\"", with: "svc/x\(index)\"")
        #expect(edited[index] != lines[index])
        let expectLine = index + 2 // 1-based, the line after the edit
        if index == lines.count - 1 {
            // The last line's edit is what the head anchor is for.
            #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(edited)])) == nil)
            let head = Self.chain(12).head
            #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(edited)], head: head)) != nil)
        } else {
            #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(edited)])) == .init(file: "audit.log", line: expectLine))
        }
        // Removal, and insertion of a copy of another line.
        var removed = lines
        removed.remove(at: index)
        if index < lines.count - 1 && index > 0 {
            #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(removed)])) == .init(file: "audit.log", line: index + 1))
        }
        var inserted = lines
        inserted.insert(lines[(index + 5) % lines.count], at: index)
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(inserted)])) != nil)
        if index + 1 < lines.count {
            var swapped = lines
            swapped.swapAt(index, index + 1)
            #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(swapped)])) != nil)
        }
    }

    @Test("the first line is the anchor unless --start names another; the head is checked when given")
    func anchors() {
        let (lines, head) = Self.chain(5)
        // Cutting lines off the front leaves a chain that verifies on its own...
        let tail = Array(lines.dropFirst(2))
        let tailVerdict = AuditChain.verify(files: [Self.file(tail)])
        #expect(tailVerdict.intact && tailVerdict.lines == 3 && tailVerdict.head == head, "a tail of a chain is a chain")
        let start = tailVerdict.startsWith
        // ...but not against the start it should have had.
        #expect(start != AuditChain.genesis)
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(tail)], start: AuditChain.genesis)) == .init(file: "audit.log", line: 1))
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(lines)], start: AuditChain.genesis, head: head)) == nil)
        // Cutting lines off the end is only visible against the head anchor.
        let cut = Array(lines.dropLast())
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(cut)])) == nil)
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(cut)], head: head)) != nil)
    }

    @Test("files chain in the order given: a missing or reordered rotated file is named")
    func acrossFiles() {
        let first = Self.chain(4)
        let second = Self.chain(3, from: first.head)
        let third = Self.chain(2, from: second.head)
        let files = [Self.file(first.lines, name: "a.2"), Self.file(second.lines, name: "a.1"), Self.file(third.lines, name: "a")]
        #expect(AuditChain.verify(files: files) == .init(lines: 9, head: third.head, startsWith: AuditChain.genesis))
        #expect(Self.brokenAt(AuditChain.verify(files: [files[0], files[2]])) == .init(file: "a", line: 1), "a.1 left out")
        #expect(Self.brokenAt(AuditChain.verify(files: [files[1], files[0], files[2]])) == .init(file: "a.2", line: 1))
    }

    @Test("a restart (genesis) is accepted only on an audit_log_opened line, and reported")
    func restarts() throws {
        let old = Self.chain(3)
        var head = AuditChain.genesis
        var out: [UInt8] = []
        AuditChain.seal(Array((AuditEvent(kind: .auditLogOpened, listener: "", reason: "started").jsonLine + "\n").utf8), head: &head, into: &out)
        let opened = String(decoding: out.dropLast(), as: UTF8.self)
        let rest = Self.chain(2, from: head)
        let verdict = AuditChain.verify(files: [Self.file(old.lines, name: "old"), Self.file([opened] + rest.lines, name: "new")])
        #expect(verdict == .init(lines: 6, head: rest.head, startsWith: AuditChain.genesis, restarts: [.init(file: "new", line: 1)]))
        // A connection line claiming genesis mid-chain is a break, not a restart.
        let forged = Self.chain(2)
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(old.lines + forged.lines)])) == .init(file: "audit.log", line: 4))
        // So is a line that only carries the event name somewhere else.
        var sneaky = AuditEvent(kind: .connectionClosed, listener: "x", reason: ",\"event\":\"audit_log_opened\"")
        sneaky.time = Date(timeIntervalSince1970: 1_800_000_000)
        var sneakyHead = AuditChain.genesis
        var sneakyOut: [UInt8] = []
        AuditChain.seal(Array((sneaky.jsonLine + "\n").utf8), head: &sneakyHead, into: &sneakyOut)
        let sneakyLine = String(decoding: sneakyOut.dropLast(), as: UTF8.self)
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(old.lines + [sneakyLine])])) == .init(file: "audit.log", line: 4))
    }

    @Test("lines that are not exactly as the sink writes them are broken", arguments: [
        "{\"event\":\"x\"}",
        "{\"event\":\"x\",\"prev_hash\":\"\(String(repeating: "A", count: 64))\"}",
        "{\"event\":\"x\",\"prev_hash\":\"\(String(repeating: "0", count: 63))\"}",
        "{\"event\":\"x\",\"prev_hash\":\"\(String(repeating: "0", count: 64))\" }",
        "{\"prev_hash\":\"\(String(repeating: "0", count: 64))\",\"event\":\"x\"}",
        "",
    ])
    func malformed(line: String) {
        let (lines, _) = Self.chain(2)
        #expect(Self.brokenAt(AuditChain.verify(files: [Self.file(lines + [line])])) == .init(file: "audit.log", line: 3))
    }

    @Test("an incomplete last line (no newline) and an empty file are broken")
    func incomplete() {
        let (lines, _) = Self.chain(2)
        var bytes = Self.file(lines).bytes
        bytes.removeLast()
        #expect(Self.brokenAt(AuditChain.verify(files: [("audit.log", bytes)])) == .init(file: "audit.log", line: 2))
        #expect(Self.brokenAt(AuditChain.verify(files: [("empty", [])])) != nil)
    }

    @Test("the sink's own log: opened, continued after a restart, reopened after rotation, verified end to end")
    func sinkLifecycle() throws {
        let directory = try scratchDirectory("audit-chain")
        let path = "\(directory)/audit.jsonl"
        let first = try JSONLinesAuditSink.file(at: path)
        for index in 0..<10 { first.record(AuditEvent(kind: .connectionClosed, listener: "a\(index)")) }
        first.flush()
        // A restart on the same file continues its chain; a crash mid-line is named by verify.
        let second = try JSONLinesAuditSink.file(at: path)
        second.record(AuditEvent(kind: .connectionClosed, listener: "b"))
        second.flush()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(AuditChain.verify(files: [(path, Array(text.utf8))]).intact)
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        second.reopen()
        second.record(AuditEvent(kind: .connectionClosed, listener: "c"))
        second.flush()
        let rotated = try Array(Data(contentsOf: URL(fileURLWithPath: path + ".1")))
        let current = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(AuditChain.verify(files: [("1", rotated), ("0", current)]) == .init(
            lines: 15, head: AuditChain.hash(current.dropLast()[(current.dropLast().lastIndex(of: 10).map { $0 + 1 } ?? 0)...]),
            startsWith: AuditChain.genesis))
        // A torn last line (a crash mid-write) is closed off and named, not silently absorbed.
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("{\"ts\":\"torn".utf8))
        try handle.close()
        let third = try JSONLinesAuditSink.file(at: path)
        third.record(AuditEvent(kind: .connectionClosed, listener: "d"))
        third.flush()
        let after = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(Self.brokenAt(AuditChain.verify(files: [("1", rotated), ("0", after)])) == .init(file: "0", line: 3))
    }

    @Test("a failing audit disk is counted per lost line and reported, not crashed on")
    func writeFailures() throws {
        let lost = LostLines()
        let sink = try JSONLinesAuditSink.file(at: "/dev/full", linesLost: { lost.add($0) })
        for index in 0..<5 { sink.record(AuditEvent(kind: .connectionClosed, listener: "l\(index)")) }
        sink.flush()
        #expect(lost.total == 6, "five lines and the opening line were lost")
        let metrics = SidecarMetrics()
        #expect(metrics.exposition().contains("backup_sidecar_audit_write_failures_total 0"), "present at 0 from the start")
        metrics.auditLinesLost(6)
        #expect(metrics.exposition().contains("backup_sidecar_audit_write_failures_total 6"))
    }
}

private final class LostLines: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add(_ lines: Int) { lock.withLock { count += lines } }
    var total: Int { lock.withLock { count } }
}

/// The attacks a review of the chain found, each now caught.
@Suite("Audit hash chain: attacks")
struct AuditChainAttackTests {
    static func sealed(_ events: [AuditEvent], head: inout String) -> [String] {
        var out: [UInt8] = []
        AuditChain.seal(Array(events.map { $0.jsonLine + "\n" }.joined().utf8), head: &head, into: &out)
        return String(decoding: out, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    @Test("lines cut from the end while the sidecar was stopped: the chain continues, the logged anchor does not match")
    func cutBeforeRestart() throws {
        let path = "\(try scratchDirectory("audit-cut"))/audit.jsonl"
        let first = try JSONLinesAuditSink.file(at: path)
        for index in 0..<5 { first.record(AuditEvent(kind: .connectionClosed, listener: "l\(index)")) }
        first.flush()
        let closedAnchor = try #require(try JSONLinesAuditSink.lastLine(of: path)).hash // what "audit log closed" logs
        var lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        lines.removeLast(2)
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: false, encoding: .utf8)
        let second = try JSONLinesAuditSink.file(at: path)
        second.record(AuditEvent(kind: .connectionClosed, listener: "after"))
        second.flush()
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(AuditChain.verify(files: [(path, bytes)]).intact, "the chain alone cannot see it")
        let anchored = AuditChain.verify(files: [(path, bytes)], anchors: [closedAnchor])
        #expect(anchored.breaks.map(\.location.file) == ["--anchor"], "\(anchored.breaks)")
    }

    @Test("junk glued in front of the next start cannot pass for a new chain")
    func gluedRestart() throws {
        let path = "\(try scratchDirectory("audit-glue"))/audit.jsonl"
        let first = try JSONLinesAuditSink.file(at: path)
        first.record(AuditEvent(kind: .connectionClosed, listener: "real"))
        first.flush()
        // 40 bytes without commas, the event marker, then 1 MiB without a newline.
        let junk = String(repeating: "x", count: 40) + ",\"event\":\"audit_log_opened\"" + String(repeating: "y", count: 1 << 20)
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(junk.utf8))
        try handle.close()
        let second = try JSONLinesAuditSink.file(at: path)
        second.record(AuditEvent(kind: .connectionClosed, listener: "after"))
        second.flush()
        let verdict = AuditChain.verify(files: [(path, try Array(Data(contentsOf: URL(fileURLWithPath: path))))])
        #expect(verdict.restarts.isEmpty && verdict.breaks.map(\.location.line) == [3], "\(verdict)")
    }

    @Test("the last line is found however long it is (no silent restart for a file without a newline in its last MiB)")
    func longLastLine() throws {
        let path = "\(try scratchDirectory("audit-long"))/audit.jsonl"
        let long = "{\"x\":\"" + String(repeating: "z", count: 3 << 20) + "\"}"
        try ("{}\n" + long + "\n").write(toFile: path, atomically: false, encoding: .utf8)
        let last = try #require(try JSONLinesAuditSink.lastLine(of: path))
        #expect(last.complete && last.hash == AuditChain.hash(Array(long.utf8)[...]))
        try long.write(toFile: path, atomically: false, encoding: .utf8)
        let torn = try #require(try JSONLinesAuditSink.lastLine(of: path))
        #expect(!torn.complete && torn.hash == last.hash)
        #expect(try JSONLinesAuditSink.lastLine(of: path + ".none") == nil)
    }

    @Test("lines lost to a failed write are reported once, as a recorded gap, and the chain holds after it")
    func recordedLoss() {
        var head = AuditChain.genesis
        let before = Self.sealed((0..<3).map { AuditEvent(kind: .connectionClosed, listener: "b\($0)") }, head: &head)
        _ = Self.sealed((0..<2).map { AuditEvent(kind: .connectionClosed, listener: "lost\($0)") }, head: &head)
        // What the writer does once writing works again: a newline, the marker, the new lines.
        let marker = Self.sealed([AuditEvent(kind: .auditLinesLost, listener: "", reason: "2 lines could not be written (No space left on device)")], head: &head)
        let after = Self.sealed([AuditEvent(kind: .connectionClosed, listener: "a")], head: &head)
        for torn in ["", "{\"ts\":\"2026-12-05T"] {
            let lines = before + [torn] + marker + after
            let verdict = AuditChain.verify(files: [AuditChainTests.file(lines)])
            #expect(verdict.breaks.count == 1, "\(verdict.breaks)")
            #expect(verdict.breaks.first?.location.line == 4)
            #expect(verdict.breaks.first?.reason.hasPrefix("2 audit lines lost here") == true)
        }
        // A marker cannot excuse an edit elsewhere.
        var edited = before + [""] + marker + after
        edited[0] = edited[0].replacingOccurrences(of: "b0", with: "b9")
        #expect(AuditChain.verify(files: [AuditChainTests.file(edited)]).breaks.count == 2)
    }

    @Test("--strict turns restarts into breaks; --start and anchors accept what they should")
    func strictAndAnchors() {
        var head = AuditChain.genesis
        let first = Self.sealed([AuditEvent(kind: .connectionClosed, listener: "x")], head: &head)
        var fresh = AuditChain.genesis
        let restart = Self.sealed([AuditEvent(kind: .auditLogOpened, listener: "", reason: "started")], head: &fresh)
        let file = AuditChainTests.file(first + restart)
        #expect(AuditChain.verify(files: [file]).intact)
        #expect(AuditChain.verify(files: [file], strict: true).breaks.count == 1)
        // A reopened line claiming genesis is not a restart.
        var reopenedHead = AuditChain.genesis
        let reopened = Self.sealed([AuditEvent(kind: .auditLogOpened, listener: "", reason: "reopened")], head: &reopenedHead)
        #expect(AuditChain.verify(files: [AuditChainTests.file(first + reopened)]).breaks.count == 1)
        let lineHash = AuditChain.hash(Array(first[0].utf8)[...])
        #expect(AuditChain.verify(files: [file], anchors: [lineHash, AuditChain.genesis]).intact)
        #expect(AuditChain.verify(files: [file], start: AuditChain.genesis).intact)
    }
}
