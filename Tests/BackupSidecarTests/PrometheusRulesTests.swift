import Foundation
import Testing
import TestFixtures
@testable import SidecarCore

/// deploy/prometheus/alerts.yml: valid for Prometheus, its unit tests pass, a broken rule fails
/// them, and every metric it names is one the sidecar exports.
@Suite("Prometheus alert rules")
struct PrometheusRulesTests {
    static let directory = TestCertificates.repositoryRoot.appendingPathComponent("deploy/prometheus").path

    @Test("promtool check rules and promtool test rules pass")
    func rulesPass() async throws {
        let check = try await ProcessRunner.run(["promtool", "check", "rules", "\(Self.directory)/alerts.yml"], timeout: 60)
        #expect(check.status == 0 && check.output.contains("SUCCESS: 7 rules found"), "\(check.output)")
        let test = try await ProcessRunner.run(["promtool", "test", "rules", "\(Self.directory)/alerts.test.yml"], timeout: 60)
        #expect(test.status == 0, "\(test.output)")
    }

    @Test("The rule tests catch a weakened rule (each alert's threshold moved)", arguments: [
        ("< 3600", "< 60"), ("> 600", "> 6000"), ("> 0.1", "> 10"), ("> 5 *", "> 50 *"), ("for: 20m", "for: 40m"),
        ("write_failures_total[5m]) > 0", "write_failures_total[5m]) > 100"),
    ])
    func mutationsFail(original: String, mutated: String) async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rules-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let rules = try String(contentsOfFile: "\(Self.directory)/alerts.yml", encoding: .utf8)
        #expect(rules.contains(original))
        try rules.replacingOccurrences(of: original, with: mutated).write(toFile: "\(scratch)/alerts.yml", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: "\(Self.directory)/alerts.test.yml", toPath: "\(scratch)/alerts.test.yml")
        let test = try await ProcessRunner.run(["promtool", "test", "rules", "\(scratch)/alerts.test.yml"], timeout: 60)
        #expect(test.status != 0, "\(original) → \(mutated) went unnoticed")
    }

    @Test("Every backup_sidecar_* metric the rules use is exported (a rename breaks this, not the pager)")
    func namesExist() throws {
        let rules = try String(contentsOfFile: "\(Self.directory)/alerts.yml", encoding: .utf8)
        let names = Set(rules.matches(of: #/backup_sidecar_[a-z_]+/#).map { String($0.output) })
        #expect(names.count >= 5)
        let exported = Set(MetricFamily.allCases.map(\.rawValue))
        #expect(names.subtracting(exported).isEmpty, "\(names.subtracting(exported))")
    }

    @Test("deploy/grafana/backup-sidecar.json: every panel query is valid PromQL (promtool) over metrics we export")
    func dashboardQueries() async throws {
        let path = TestCertificates.repositoryRoot.appendingPathComponent("deploy/grafana/backup-sidecar.json")
        let dashboard = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: path)) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        let expressions = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        #expect(expressions.count >= 12)
        // Each query as a recording rule: promtool parses and checks it offline.
        var rules = "groups:\n  - name: dashboard\n    rules:\n"
        for (index, expression) in expressions.enumerated() {
            let concrete = expression.replacingOccurrences(of: "$instance", with: ".*")
            rules += "      - record: dashboard:query_\(index)\n        expr: '\(concrete.replacingOccurrences(of: "'", with: "''"))'\n"
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("dashboard-\(UUID().uuidString).yml").path
        try rules.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let check = try await ProcessRunner.run(["promtool", "check", "rules", file], timeout: 60)
        #expect(check.status == 0, "\(check.output)")

        let exported = Set(MetricFamily.allCases.map(\.rawValue))
        let used = Set(expressions.flatMap { $0.matches(of: #/backup_sidecar_[a-z_]+/#).map { String($0.output) } })
            .map { $0.hasSuffix("_bucket") ? String($0.dropLast("_bucket".count)) : $0 }
        #expect(Set(used).subtracting(exported).isEmpty, "\(Set(used).subtracting(exported))")
        let process = Set(expressions.flatMap { $0.matches(of: #/process_[a-z_]+/#).map { String($0.output) } })
        #expect(process.subtracting(["process_resident_memory_bytes", "process_cpu_seconds_total"]).isEmpty)
        #expect(ProcessMetrics(cpuSeconds: 0, residentBytes: 0, virtualBytes: 0, startTimeSeconds: 0, openFDs: 0, maxFDs: 0, threads: 0)
            .exposition.contains("process_resident_memory_bytes 0"))
    }
}
