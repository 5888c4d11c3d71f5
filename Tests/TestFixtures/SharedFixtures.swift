import Foundation
import Glibc
import Testing
@testable import SidecarModel

/// The `backup-sidecar` binary the end-to-end tests run, and the files they give it.
package enum SidecarBinary {
    /// Built next to the test bundle by `swift build --build-tests` (scripts/test.sh).
    package static let path: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("backup-sidecar").path
    }()

    package static let scratch: String = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("backup-sidecar-cli-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }()

    package static func write(_ name: String, _ contents: String) -> String {
        let path = "\(scratch)/\(name)"
        FileManager.default.createFile(atPath: path, contents: Data(contents.utf8))
        return path
    }

    package static func certs(_ cert: String = "storage", key: String? = nil) -> [String] {
        ["--cert", TestCertificates.path("\(cert).pem"), "--key", TestCertificates.path("\(key ?? cert).key"),
         "--ca", TestCertificates.path("ca.pem")]
    }

    /// A service file for the binary as the storage sidecar: its public listener on a free port
    /// (returned), its app on `appPort`; `http`: an L7 listener (`"protocol": "http"`).
    package static func storageService(_ fileName: String, appPort: Int, http: Bool = false) -> (port: Int, path: String) {
        let port = freeLocalPort()
        let config = http ? #", "config": {"protocol": "http"}"# : ""
        let path = write(fileName, """
            {"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "port": \(port), "address": "127.0.0.1",
              "proxy": {"destination_service_name": "storage", "local_service_port": \(appPort)\(config)}}}
            """)
        return (port, path)
    }

    /// A service file for the binary: a public listener on a free port, nothing behind it.
    package static func publicListenerOnly(_ fileName: String) -> (port: Int, path: String) {
        let port = freeLocalPort()
        let path = write(fileName, """
            {"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "port": \(port), "address": "127.0.0.1",
              "proxy": {"destination_service_name": "storage", "local_service_port": 9}}}
            """)
        return (port, path)
    }
}

/// The admin listener, read with curl.
package enum AdminHTTP {
    package static func get(_ port: Int, _ path: String) async throws -> (status: String, body: String) {
        let run = try await ProcessRunner.run(["curl", "-sS", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)\(path)"], timeout: 10)
        var lines = run.output.split(separator: "\n", omittingEmptySubsequences: false)
        let status = String(lines.removeLast())
        return (status, lines.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// One echo round trip on an open socket (the socket has no other reader or writer).
package func echoPing(_ socket: BlockingSocket, _ text: String) -> Bool {
    let bytes = Array(text.utf8)
    guard socket.send(bytes) else { return false }
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while received.count < bytes.count {
        let count = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, 0) }
        if count <= 0 { return false }
        received += buffer[0..<count]
    }
    return received == bytes
}

/// The L7 tests' policy and their keep-alive curl client.
package enum L7Fixture {
    package static let backupPolicy: [Intention] = {
        let json = try! String(contentsOf: TestCertificates.repositoryRoot.appendingPathComponent("deploy/intentions-l7.json"),
                               encoding: .utf8)
        return try! IntentionsFile.decode(Data(json.utf8), source: "deploy/intentions-l7.json")
    }()

    package struct Response: CustomStringConvertible {
        package let body: String
        package let status: String
        /// New connections curl opened for this request (0: the previous one was reused).
        package let connects: String
        /// HTTP version curl used ("1.1", "2").
        package let version: String
        package var description: String { "\(status)/\(connects)/h\(version): \(body)" }
    }

    /// One curl process, one keep-alive connection: requests separated with --next.
    package static func curl(_ port: Int, _ requests: [[String]]) async throws -> [Response] {
        // A hang guard, not a measurement: wide enough for a loaded 2-core machine.
        var arguments = ["curl", "-sS", "--max-time", "120"]
        for (index, request) in requests.enumerated() {
            if index > 0 { arguments.append("--next") }
            arguments += ["-o", "-", "-w", "\n@@%{http_code} %{num_connects} %{http_version}\n"] + request.map {
                $0.replacingOccurrences(of: "URL", with: "http://127.0.0.1:\(port)")
            }
        }
        let run = try await ProcessRunner.run(arguments, timeout: 180)
        #expect(run.status == 0, "curl: \(run.output)")
        var responses: [Response] = []
        var body: [Substring] = []
        for line in run.output.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("@@") {
                let fields = line.dropFirst(2).split(separator: " ")
                responses.append(Response(body: body.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines),
                                          status: String(fields[0]), connects: String(fields[1]), version: String(fields[2])))
                body = []
            } else {
                body.append(line)
            }
        }
        return responses
    }
}
