import Foundation
import NIOConcurrencyHelpers
@testable import SidecarTLS

/// The dev CA and every negative certificate, made once per test run by certs-dev/gen.sh
/// (the same script operators use), into a fresh temporary directory.
package enum TestCertificates {
    package static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    package static let directory: String = {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("backup-sidecar-certs-\(ProcessInfo.processInfo.processIdentifier)").path
        let result = try! ProcessRunner.runBlocking(["bash", repositoryRoot.appendingPathComponent("certs-dev/gen.sh").path, directory])
        precondition(result.status == 0, "certs-dev/gen.sh failed: \(result.output)")
        return directory
    }()

    package static func path(_ name: String) -> String { "\(directory)/\(name)" }

    package static var trustDomain: String {
        try! String(contentsOfFile: path("trust-domain.txt"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Credentials for a certificate pair `NAME.pem`/`NAME.key`, trusting `roots`.
    package static func credentials(_ name: String, key: String? = nil, roots: String = "ca.pem") throws -> TLSCredentials {
        try TLSCredentials.load(certificatePath: path("\(name).pem"), keyPath: path("\(key ?? name).key"), rootsPath: path(roots))
    }
}

/// Runs a command to completion, capturing stdout+stderr.
package enum ProcessRunner {
    /// The async form: the blocking wait happens on its own thread.
    package static func run(_ arguments: [String], input: Data? = nil, timeout: TimeInterval = 30) async throws -> Result {
        let box = NIOLockedValueBox<Swift.Result<Result, Error>?>(nil)
        await onThread {
            let outcome = Swift.Result { try runBlocking(arguments, input: input, timeout: timeout) }
            box.withLockedValue { $0 = outcome }
        }
        return try box.withLockedValue { $0 }!.get()
    }

    package struct Result {
        package let status: Int32
        package let output: String
    }

    /// Runs under coreutils `timeout` (SIGKILL 2 s after SIGTERM), so a stuck tool cannot hang
    /// the suite. Blocking: call from a thread (`onThread`), not from the concurrency pool.
    package static func runBlocking(_ arguments: [String], input: Data? = nil, timeout: TimeInterval = 30) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-k", "2", String(Int(timeout))] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let stdin = Pipe()
        process.standardInput = stdin
        try process.run()
        if let input { stdin.fileHandleForWriting.write(input) }
        try? stdin.fileHandleForWriting.close()
        let collected = NIOLockedValueBox<Data?>(nil)
        let reader = Thread {
            let data = output.fileHandleForReading.readDataToEndOfFile()
            collected.withLockedValue { $0 = data }
        }
        reader.start()
        process.waitUntilExit()
        while collected.withLockedValue({ $0 }) == nil { usleep(1_000) }
        return Result(status: process.terminationStatus, output: String(decoding: collected.withLockedValue { $0 }!, as: UTF8.self))
    }
}
