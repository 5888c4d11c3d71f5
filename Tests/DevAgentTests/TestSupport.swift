@testable import DevAgent
import Foundation
import Logging
import Testing

/// A reply read by curl: status, lower-cased header names, body.
struct Reply {
    var status: Int
    var headers: [String: String]
    var body: Data

    var text: String { String(decoding: body, as: UTF8.self) }
    var index: UInt64? { headers["x-consul-index"].flatMap(UInt64.init) }

    func json() throws -> Any { try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed]) }
    func object() throws -> [String: Any] { try #require(try json() as? [String: Any]) }
    func array() throws -> [[String: Any]] { try #require(try json() as? [[String: Any]]) }
}

struct CommandResult {
    var status: Int32
    var output: String
}

/// Runs a program to completion without blocking a cooperative thread (the agent under test
/// shares the small pool). Input and output go through temporary files: Foundation pipes
/// shared by concurrently spawned processes can miss their EOF on Linux.
func runCommand(_ executable: String, _ arguments: [String], stdin: Data? = nil) async throws -> CommandResult {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("devagent-cmd-\(UUID().uuidString)")
    let inputURL = scratch.appendingPathExtension("in"), outputURL = scratch.appendingPathExtension("out")
    defer {
        try? FileManager.default.removeItem(at: inputURL)
        try? FileManager.default.removeItem(at: outputURL)
    }
    try (stdin ?? Data()).write(to: inputURL)
    FileManager.default.createFile(atPath: outputURL.path, contents: nil)
    let input = try FileHandle(forReadingFrom: inputURL), output = try FileHandle(forWritingTo: outputURL)
    defer {
        try? input.close()
        try? output.close()
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    let status = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int32, Error>) in
        process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
        do { try process.run() } catch { continuation.resume(throwing: error) }
    }
    return CommandResult(status: status, output: String(decoding: try Data(contentsOf: outputURL), as: UTF8.self))
}

/// One HTTP request through curl (a real client over 127.0.0.1).
func http(_ method: String, _ url: String, body: String? = nil, headers: [String: String] = [:],
          maxTime: Double = 20) async throws -> Reply {
    var arguments = ["-sS", "-i", "-X", method, "--max-time", String(maxTime), "-H", "Expect:"]
    for (name, value) in headers { arguments += ["-H", "\(name): \(value)"] }
    if body != nil { arguments += ["--data-binary", "@-"] }
    arguments.append(url)
    let result = try await runCommand("/usr/bin/curl", arguments, stdin: body.map { Data($0.utf8) })
    guard result.status == 0 else { throw CurlError(status: result.status, output: result.output) }
    let raw = result.output
    guard let split = raw.range(of: "\r\n\r\n") else { throw CurlError(status: -1, output: raw) }
    let headLines = raw[..<split.lowerBound].components(separatedBy: "\r\n")
    let statusCode = Int(headLines.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
    var replyHeaders: [String: String] = [:]
    for line in headLines.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { continue }
        replyHeaders[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return Reply(status: statusCode, headers: replyHeaders, body: Data(raw[split.upperBound...].utf8))
}

struct CurlError: Error {
    var status: Int32
    var output: String
}

/// A started agent on a free port; stops it when the test ends.
final class TestAgent: Sendable {
    let agent: DevAgent
    let base: String

    init(agent: DevAgent, base: String) {
        self.agent = agent
        self.base = base
    }

    static func start(_ configure: (inout DevAgentConfiguration) -> Void = { _ in }) async throws -> TestAgent {
        var configuration = DevAgentConfiguration(logger: Logger(label: "dev-agent-test"))
        configuration.httpPort = 0
        configure(&configuration)
        let agent = try DevAgent(configuration: configuration)
        let port = try await agent.start()
        return TestAgent(agent: agent, base: "http://127.0.0.1:\(port)")
    }

    func get(_ path: String, headers: [String: String] = [:]) async throws -> Reply {
        try await http("GET", base + path, headers: headers)
    }

    func put(_ path: String, _ body: String? = nil, headers: [String: String] = [:]) async throws -> Reply {
        try await http("PUT", base + path, body: body ?? "", headers: headers)
    }

    func post(_ path: String, _ body: String, headers: [String: String] = [:]) async throws -> Reply {
        try await http("POST", base + path, body: body, headers: headers)
    }
}

/// A scratch directory removed by the caller.
func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("devagent-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func elapsed(since start: ContinuousClock.Instant) -> Double {
    let duration = ContinuousClock.now - start
    return Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}
