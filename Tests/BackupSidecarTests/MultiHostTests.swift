import Foundation
import Testing
import TestFixtures

/// Issue 17: hosts in network namespaces (a Consul host, a backup host, two storage hosts) built
/// by scripts/multihost.sh, which prints one PASS line per check.
@Suite("Multi-host deployment in network namespaces")
struct MultiHostTests {
    /// Namespaces need root and CAP_SYS_ADMIN; where they cannot be made the test cannot run.
    static let namespacesAvailable: Bool = {
        let name = "bs-probe-\(getpid())"
        guard (try? ProcessRunner.runBlocking(["ip", "netns", "add", name]))?.status == 0 else { return false }
        _ = try? ProcessRunner.runBlocking(["ip", "netns", "del", name])
        return true
    }()

    @Test("Discovery by real addresses, 256 MiB round trip, a storage host going dark, Consul unreachable for 60 s",
          .enabled(if: namespacesAvailable, "network namespaces cannot be created here (needs root and CAP_SYS_ADMIN)"))
    func multiHost() async throws {
        let script = TestCertificates.repositoryRoot.appendingPathComponent("scripts/multihost.sh").path
        let result = try await ProcessRunner.run(["bash", script, SidecarBinary.path], timeout: 600)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("multihost: all checks passed"), "\(result.output)")
        #expect(result.output.components(separatedBy: "PASS:").count - 1 == 7, "\(result.output)")
    }
}
