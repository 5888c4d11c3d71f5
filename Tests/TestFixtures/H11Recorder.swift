import Foundation
import Glibc

/// The independent HTTP/1.1 service of the differential tests: Python's h11 (a strict parser
/// that shares no code with ours) serving on 127.0.0.1 and logging every request it reads, by
/// connection (Tests/differential/h11_recorder.py).
package final class H11Recorder: @unchecked Sendable {
    package static let script = TestCertificates.repositoryRoot.appendingPathComponent("Tests/differential/h11_recorder.py").path

    package let port: Int
    private let process: Process
    private let logPath: String

    package struct Record: Decodable {
        package let conn: Int
        package let event: String
        package let method: String?
        package let target: String?
        package let headers: [[String]]?
        package let body_len: Int?
        package let body_sha256: String?
        package let kind: String?
        package let detail: String?
    }

    private init(port: Int, process: Process, logPath: String) {
        self.port = port
        self.process = process
        self.logPath = logPath
    }

    package static func start() async throws -> H11Recorder {
        let logPath = FileManager.default.temporaryDirectory.appendingPathComponent("h11-\(UUID().uuidString).jsonl").path
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "serve", logPath]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
        let line = await onThread { () -> String in
            var bytes: [UInt8] = []
            while let byte = try? output.fileHandleForReading.read(upToCount: 1), let first = byte.first, first != 10 {
                bytes.append(first)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        guard line.hasPrefix("PORT "), let port = Int(line.dropFirst(5)) else {
            process.forceStop()
            throw POSIXError(.EIO)
        }
        return H11Recorder(port: port, process: process, logPath: logPath)
    }

    /// Everything logged so far.
    package var records: [Record] {
        guard let text = try? String(contentsOfFile: logPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Record.self, from: Data($0.utf8)) }
    }

    package func stop() {
        process.forceStop()
        try? FileManager.default.removeItem(atPath: logPath)
    }

    /// How h11 itself reads each stream (as a server reading a client), for comparison.
    package struct Reading: Decodable {
        package struct Request: Decodable {
            package let method: String
            package let target: String
            package let complete: Bool
            let body_len: Int?
            package let body_sha256: String?
        }

        package let requests: [Request]
        package let error: String?
    }

    package struct ParseFailed: Error { let output: String }

    package static func parse(_ streams: [[UInt8]]) async throws -> [Reading] {
        let input = try JSONEncoder().encode(streams.map { Data($0).base64EncodedString() })
        let run = try await ProcessRunner.run(["python3", script, "parse"], input: input, timeout: 120)
        guard run.status == 0 else { throw ParseFailed(output: run.output) }
        return try JSONDecoder().decode([Reading].self, from: Data(run.output.utf8))
    }
}
