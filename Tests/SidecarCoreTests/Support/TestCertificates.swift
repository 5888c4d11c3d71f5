import Foundation
import SidecarTLS

/// The dev CA and every negative certificate, made once per test run by certs-dev/gen.sh
/// (the same script operators use), into a fresh temporary directory.
enum TestCertificates {
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let directory: String = {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("backup-sidecar-certs-\(ProcessInfo.processInfo.processIdentifier)").path
        let result = try! ProcessRunner.run(["bash", repositoryRoot.appendingPathComponent("certs-dev/gen.sh").path, directory])
        precondition(result.status == 0, "certs-dev/gen.sh failed: \(result.output)")
        return directory
    }()

    static func path(_ name: String) -> String { "\(directory)/\(name)" }

    static var trustDomain: String {
        try! String(contentsOfFile: path("trust-domain.txt"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Credentials for a certificate pair `NAME.pem`/`NAME.key`, trusting `roots`.
    static func credentials(_ name: String, roots: String = "ca.pem") throws -> TLSCredentials {
        try TLSCredentials.load(certificatePath: path("\(name).pem"), keyPath: path("\(name).key"), rootsPath: path(roots))
    }
}

/// Runs a command to completion, capturing stdout+stderr.
enum ProcessRunner {
    struct Result {
        let status: Int32
        let output: String
    }

    static func run(_ arguments: [String], input: Data? = nil, timeout: TimeInterval = 30) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let stdin = Pipe()
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(input) }
        try? stdin.fileHandleForWriting.close()
        let collected = LockedData()
        let reader = Thread {
            let data = output.fileHandleForReading.readDataToEndOfFile()
            collected.set(data)
        }
        reader.start()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        while !collected.isSet { usleep(1_000) }
        return Result(status: process.terminationStatus, output: String(decoding: collected.data, as: UTF8.self))
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Data?
    func set(_ data: Data) { lock.lock(); value = data; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value != nil }
    var data: Data { lock.lock(); defer { lock.unlock() }; return value ?? Data() }
}
