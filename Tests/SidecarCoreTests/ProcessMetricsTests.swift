import Foundation
import Testing
import TestFixtures
@testable import SidecarCore

@Suite("process_* metrics from /proc")
struct ProcessMetricsTests {
    /// A /proc/PID/stat line with the fields that matter set to recognisable values:
    /// utime 1500, stime 500, threads 7, starttime 12000, vsize 123456789, rss 2048.
    static func statLine(command: String) -> String {
        var fields = (3...52).map { _ in "0" }
        fields[0] = "S"
        func set(_ number: Int, _ value: String) { fields[number - 3] = value }
        set(14, "1500"); set(15, "500"); set(20, "7"); set(22, "12000"); set(23, "123456789"); set(24, "2048")
        return "4242 (\(command)) " + fields.joined(separator: " ") + "\n"
    }

    static let expected = ProcessMetrics.Stat(userTicks: 1500, systemTicks: 500, threads: 7, startTicksSinceBoot: 12000,
                                              virtualBytes: 123456789, residentPages: 2048)

    // The command name is the process's own choice: spaces, parentheses and digits in it
    // must not shift the fields after it.
    @Test("Fields are counted after the last parenthesis, whatever the command name holds", arguments: [
        "backup-sidecar", "a b c", "x) 1 2 3 (y", "))", "(", "",  "1500 500 7",
    ])
    func commandNames(command: String) {
        #expect(ProcessMetrics.parseStat(Self.statLine(command: command)) == Self.expected)
    }

    @Test("Truncated, garbled or empty stat lines give nothing (no metric rather than a wrong one)", arguments: [
        "", "4242 backup-sidecar S 1 2 3", "4242 (short) S 1 2 3", "4242 (x) S " + String(repeating: "z ", count: 60),
    ])
    func malformed(line: String) {
        #expect(ProcessMetrics.parseStat(line) == nil)
    }

    @Test("Derived values: CPU seconds, RSS bytes, start time from boot time and ticks")
    func derived() throws {
        let boot = try #require(ProcessMetrics.parseBootTime("cpu  1 2 3\nintr 5\nbtime 1764900000\nprocesses 9\n"))
        #expect(boot == 1_764_900_000)
        #expect(ProcessMetrics.parseBootTime("cpu 1 2 3\n") == nil)
        let metrics = ProcessMetrics.from(stat: Self.expected, bootTime: boot, ticksPerSecond: 100, pageSize: 4096, openFDs: 12, maxFDs: 1024)
        #expect(metrics == ProcessMetrics(cpuSeconds: 20, residentBytes: 2048 * 4096, virtualBytes: 123456789,
                                          startTimeSeconds: 1_764_900_120, openFDs: 12, maxFDs: 1024, threads: 7))
        let text = metrics.exposition
        #expect(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 20\n"))
        #expect(text.contains("process_start_time_seconds 1764900120\n"))
        #expect(ProcessMetrics.format(0.25) == "0.25")
    }

    @Test("This process, read live: plausible values")
    func live() throws {
        let metrics = try #require(ProcessMetrics.current())
        #expect(metrics.residentBytes > 1_000_000 && metrics.threads >= 1 && metrics.openFDs >= 3)
        #expect(abs(metrics.startTimeSeconds - Date().timeIntervalSince1970) < 24 * 3600)
    }
}
