import Foundation
import Glibc
import TestSupport

/// A third-party program running in the background for a test (nginx, rclone), its output in
/// a log file. Spawned and reaped with posix_spawn/waitpid directly, with only stdin, stdout
/// and stderr: killed (SIGKILL) and reaped on `stop()` or deinit, without Foundation's
/// Process, whose waitUntilExit was seen to miss the exit of a killed nginx.
package final class ToolProcess: @unchecked Sendable {
    package let pid: pid_t
    package let logFile: String
    private var reaped = false

    package init(_ arguments: [String], logName: String) throws {
        logFile = "\(SidecarBinary.scratch)/\(logName)"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, logFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        // Nothing else of ours may reach the child: an inherited socket stays open there after
        // we close it (a connection a test cuts would never end, a port would stay bound).
        // Glibc's closefrom action is not visible to Swift, so a small exec wrapper does it.
        let closing = ["python3", "-c", "import os, sys; os.closerange(3, os.sysconf('SC_OPEN_MAX')); os.execvp(sys.argv[1], sys.argv[1:])"]
        let arguments = closing + arguments
        var argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child = pid_t()
        let status = posix_spawnp(&child, arguments[0], &actions, nil, &argv, environ)
        guard status == 0 else { throw POSIXError(POSIXErrorCode(rawValue: status) ?? .EIO) }
        pid = child
    }

    deinit { stop() }

    package func stop() {
        guard !reaped else { return }
        reaped = true
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    package var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }
}

/// A scratch directory under the test scratch area, created empty.
package func scratchDirectory(_ name: String) throws -> String {
    let path = "\(SidecarBinary.scratch)/\(name)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// nginx as a WebDAV storage service, as in scripts/demo.sh but with every DAV method enabled
/// for the whole server: whatever reaches it is carried out, so only the sidecar stands between
/// a request and the files.
package final class NginxWebDAV: @unchecked Sendable {
    package let port: Int
    package let root: String
    private let server: ToolProcess

    package init() async throws {
        let work = try scratchDirectory("nginx")
        root = "\(work)/storage"
        try FileManager.default.createDirectory(atPath: "\(root)/repository", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(work)/body", withIntermediateDirectories: true)
        chmod(work, 0o777)
        chmod(root, 0o777)
        chmod("\(root)/repository", 0o777)
        chmod("\(work)/body", 0o777)
        port = freeLocalPort()
        let config = """
            daemon off;
            worker_processes 1;
            pid \(work)/nginx.pid;
            error_log \(work)/error.log;
            events {}
            http {
              access_log off;
              client_body_temp_path \(work)/body;
              client_max_body_size 0;
              server {
                listen 127.0.0.1:\(port);
                root \(root);
                location / { dav_methods PUT DELETE MKCOL COPY MOVE; create_full_put_path on; dav_access user:rw group:r all:r; }
              }
            }
            """
        FileManager.default.createFile(atPath: "\(work)/nginx.conf", contents: Data(config.utf8))
        server = try ToolProcess(["nginx", "-c", "\(work)/nginx.conf", "-p", work], logName: "nginx-\(port).log")
        let port = self.port
        guard await eventually(timeout: 20, { (try? BlockingSocket(port: port)) != nil }) else {
            throw POSIXError(.ECONNREFUSED)
        }
    }

    package func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: root + path) }

    package func stop() { server.stop() }
}

/// `rclone serve restic` on 127.0.0.1 over a scratch directory: the REST server restic backs up
/// to. Without `--append-only`, so that what refuses a deletion is the mesh, not the server.
package final class RcloneRestic: @unchecked Sendable {
    package let port: Int
    package let directory: String
    private let server: ToolProcess

    package init() async throws {
        directory = try scratchDirectory("restic-repo")
        port = freeLocalPort()
        server = try ToolProcess(["rclone", "serve", "restic", "--addr", "127.0.0.1:\(port)", directory],
                                 logName: "rclone-\(port).log")
        let port = self.port
        guard await eventually(timeout: 30, { (try? BlockingSocket(port: port)) != nil }) else {
            throw POSIXError(.ECONNREFUSED)
        }
    }

    package func stop() { server.stop() }
}
