import Foundation
import Glibc
import TestSupport

/// The real `backup-sidecar` binary running in the background, its stderr in a file under
/// SidecarBinary.scratch. Killed on deinit if a test ends early.
package final class SidecarProcess: @unchecked Sendable {
    package let process = Process()
    package let logFile: String

    package init(_ arguments: [String], logName: String, environment extra: [String: String] = [:]) throws {
        logFile = "\(SidecarBinary.scratch)/\(logName)"
        FileManager.default.createFile(atPath: logFile, contents: nil)
        process.executableURL = URL(fileURLWithPath: SidecarBinary.path)
        process.arguments = arguments
        if !extra.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 } }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: logFile)
        try process.run()
    }

    deinit { process.forceStop() }

    /// Sends SIGTERM, then waits for the exit: the status and everything the process logged.
    package func terminate() async -> (status: Int32, log: String) {
        sendTerminate()
        return await exit()
    }

    /// SIGTERM now (the drain starts); `exit()` waits for its end.
    package func sendTerminate() { kill(process.processIdentifier, SIGTERM) }

    /// Waits for the process to end: the status and everything it logged.
    package func exit() async -> (status: Int32, log: String) {
        let process = self.process
        let status = await onThread { () -> Int32 in
            process.waitUntilExit()
            return process.terminationStatus
        }
        return (status, (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "")
    }
}

/// Echo round trips through `port` until one succeeds, 100 ms apart, for up to `seconds` (a
/// sidecar still starting, or still waiting for its instances, refuses the first ones). A
/// deadline, not a count of attempts: refused attempts fail at once, and a loaded machine may
/// need many seconds to start a process.
package func eventuallyEchoes(port: Int, within seconds: Int = 60) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if await echoRoundTrip(port: port) { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return false
}

extension Process {
    /// SIGKILL and reap. Not `terminate()`: the test process ignores SIGTERM once a signal test
    /// has installed its handlers, and children inherit that, so SIGTERM would leave them running.
    package func forceStop() {
        guard isRunning else { return }
        kill(processIdentifier, SIGKILL)
        waitUntilExit()
    }
}
