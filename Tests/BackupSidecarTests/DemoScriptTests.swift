import Foundation
import Testing
import TestFixtures

/// The README's main job, run as a user runs it (with the binary this suite built, so it
/// does not build again): restic and curl through two sidecars on the embedded dev agent.
@Suite("scripts/demo.sh")
struct DemoScriptTests {
    @Test("the demo's two scenarios verify and it exits 0 (restic forget --prune refused, the edited audit copy named)",
          .timeLimit(.minutes(6)))
    func demo() async throws {
        let script = TestCertificates.repositoryRoot.appendingPathComponent("scripts/demo.sh").path
        let run = try await ProcessRunner.run(["env", "BACKUP_SIDECAR_BIN=\(SidecarBinary.path)", script], timeout: 330)
        #expect(run.status == 0, "\(run.output.suffix(3000))")
        #expect(run.output.contains("RESULT: both scenarios verified"), "\(run.output.suffix(3000))")
        // Its own checks print "   ok: ..." or "   FAILED: ..." (audit verify's output is indented "   | ").
        #expect(!run.output.split(separator: "\n").contains { $0.hasPrefix("   FAILED:") }, "\(run.output.suffix(3000))")
        #expect(run.output.contains("BROKEN at "), "audit verify named the forged line")
        // The logs it keeps for the reader are not needed here.
        if let line = run.output.split(separator: "\n").first(where: { $0.hasPrefix("== audit logs, sidecar and server logs: ") }),
           let directory = line.split(separator: " ").last, directory.hasPrefix("/tmp/backup-sidecar-demo.") {
            try? FileManager.default.removeItem(atPath: String(directory))
        }
    }
}
