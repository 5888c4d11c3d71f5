import Foundation
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
import TestSupport
@testable import SidecarModel

/// The audit log under a real logrotate, both ways it rotates: `create` (move the file away,
/// SIGHUP makes the sidecar reopen its path) and `copytruncate` (the file is copied and cut
/// to zero in place: O_APPEND writes continue at the new end, with no hole of zeros).
@Suite("Audit log rotation with logrotate", .serialized)
struct AuditRotationTests {
    static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// One audit line: a connection that closes in its handshake.
    static func provokeLine(port: Int) {
        if let probe = try? BlockingSocket(port: port) { probe.shutdownWrite(); _ = probe.receiveAll() }
    }

    static func run(mode: String) async throws -> (before: [String], rotated: [String], after: [String], raw: Data, verify: ProcessRunner.Result) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("audit-rotate-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let audit = "\(directory)/audit.jsonl"
        let (port, service) = SidecarBinary.publicListenerOnly("rotate-\(mode).json")
        let sidecar = try SidecarProcess(["run", "--admin-bind", "off", "--service-file", service, "--audit-log", audit]
                                         + SidecarBinary.certs(), logName: "rotate-\(mode).log")
        #expect(await eventually(timeout: 30) { (try? BlockingSocket(port: port)) != nil })
        for _ in 0..<3 { await onThread { provokeLine(port: port) } }
        #expect(await eventually(timeout: 30) { lines(audit).count >= 4 })
        let before = lines(audit)

        let postrotate = mode == "create" ? "postrotate\n    kill -HUP \(sidecar.process.processIdentifier)\n  endscript" : ""
        try """
            \(audit) {
              rotate 2
              \(mode == "create" ? "create 0640" : "copytruncate")
              \(postrotate)
            }
            """.write(toFile: "\(directory)/logrotate.conf", atomically: true, encoding: .utf8)
        let rotate = try await ProcessRunner.run(["logrotate", "-f", "-s", "\(directory)/state", "\(directory)/logrotate.conf"], timeout: 60)
        #expect(rotate.status == 0, "\(rotate.output)")
        // The reopen happens on SIGHUP's thread; a line provoked after it must reach the new file.
        #expect(await eventually(timeout: 30) {
            provokeLine(port: port)
            return lines(audit).contains { $0.contains("handshake_rejected") }
        }, "new lines reach \(audit) after the rotation")
        let (status, log) = await sidecar.terminate()
        #expect(status == 0, "\(log)")
        // The chain runs across the rotation, checked by the shipped command.
        let verify = try await ProcessRunner.run([SidecarBinary.path, "audit", "verify", "\(audit).1", audit], timeout: 30)
        return (before, lines("\(audit).1"), lines(audit), (try? Data(contentsOf: URL(fileURLWithPath: audit))) ?? Data(), verify)
    }

    @Test("logrotate (create + SIGHUP, and copytruncate): old lines stay in audit.jsonl.1, new ones go to audit.jsonl", arguments: ["create", "copytruncate"])
    func rotation(mode: String) async throws {
        let (before, rotated, after, raw, verify) = try await Self.run(mode: mode)
        #expect(verify.status == 0 && verify.output.contains("OK: \(rotated.count + after.count) chained lines in 2 file(s)"), "\(verify.output)")
        if mode == "create" {
            #expect(after.first?.contains("\"reason\":\"reopened\"") == true, "the new file starts by naming the old one's last line")
        }
        #expect(rotated.count >= before.count && Array(rotated.prefix(before.count)) == before, "the rotated file keeps every old line")
        #expect(!after.isEmpty && Set(after).isDisjoint(with: Set(before)), "the new file has only new lines")
        #expect(!raw.contains(0), "no hole of zeros at the start of the truncated file")
        for line in after {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "each line is whole JSON: \(line)")
        }
    }

    @Test("reopen(): lines before the call are in the old file, lines after in the new one")
    func reopenOrdering() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("audit-reopen-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/audit.jsonl"
        let sink = try JSONLinesAuditSink.file(at: path)
        for index in 0..<100 { sink.record(AuditEvent(kind: .connectionClosed, listener: "old-\(index)")) }
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        sink.reopen()
        for index in 0..<50 { sink.record(AuditEvent(kind: .connectionClosed, listener: "new-\(index)")) }
        sink.flush()
        let old = Self.lines(path + ".1"), new = Self.lines(path)
        #expect(old.count == 101 && old.dropFirst().allSatisfy { $0.contains("\"old-") })
        #expect(new.count == 51 && new.dropFirst().allSatisfy { $0.contains("\"new-") })
        // The new file's first line says it was reopened and names the old file's last line.
        #expect(new.first?.contains("\"event\":\"audit_log_opened\"") == true && new.first?.contains("\"reason\":\"reopened\"") == true)
        #expect(new.first.flatMap { AuditChain.claimedHash(Array($0.utf8)[...]) } == old.last.map { AuditChain.hash(Array($0.utf8)[...]) })
        let files = [(path + ".1", Array((old.joined(separator: "\n") + "\n").utf8)), (path, Array((new.joined(separator: "\n") + "\n").utf8))]
        let verdict = AuditChain.verify(files: files)
        #expect(verdict.intact && verdict.lines == 152 && verdict.restarts.isEmpty, "one chain across the rotation: \(verdict)")
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int).map { $0 & 0o137 } == 0, "created 0640 at most: no execute, not world-readable")
    }
}
