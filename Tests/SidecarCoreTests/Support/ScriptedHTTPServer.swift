import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
@testable import SidecarHTTP

/// The package's HTTP/1.1 server on 127.0.0.1:0 whose every answer comes from `respond`, so tests can
/// play an agent that misbehaves in exactly one way (truncated JSON, 500, 403, ...).
final class ScriptedHTTPServer: Sendable {
    struct Reply: Sendable {
        var status: HTTPResponseStatus = .ok
        var headers: [(String, String)] = []
        var body: String
        /// Held back this long first (a blocking query that waited).
        var delay: TimeAmount = .zero
    }

    private let server: HTTPServer
    private let requestLog: NIOLockedValueBox<[String]>
    var port: Int { server.port }
    /// "METHOD uri" of every request, the X-Consul-Token each carried, and any Metadata header.
    var requests: [String] { requestLog.withLockedValue { $0 } }

    /// On 127.0.0.1:0, or on a unix socket at `unixSocketPath`.
    init(group: EventLoopGroup, unixSocketPath: String? = nil,
         respond: @escaping @Sendable (_ method: HTTPMethod, _ uri: String) -> Reply) async throws {
        let log = NIOLockedValueBox<[String]>([])
        requestLog = log
        server = HTTPServer(group: group) { request in
            // The Metadata header only when present (IMDS requests), so Consul-call lines stay as they were.
            let metadata = request.headers.first(name: "Metadata").map { " metadata=\($0)" } ?? ""
                + (request.headers.first(name: "Authorization").map { " authorization=\($0)" } ?? "")
            let token = request.headers.first(name: "X-Consul-Token") ?? "-"
            log.withLockedValue { $0.append("\(request.method) \(request.uri) token=\(token)\(metadata)") }
            let reply = respond(request.method, request.uri)
            if reply.delay > .zero { try? await Task.sleep(nanoseconds: UInt64(reply.delay.nanoseconds)) }
            let headers = reply.headers.filter { $0.0.lowercased() != "content-type" } + [("Content-Type", "application/json")]
            return HTTPResponse(status: reply.status, headers: headers, body: Data(reply.body.utf8))
        }
        if let unixSocketPath {
            try await server.start(unixSocketPath: unixSocketPath)
        } else {
            try await server.start(host: "127.0.0.1", port: 0)
        }
    }

    func stop() async { await server.stop() }
}

/// Collects log messages (message and metadata) so tests can check that a failure was logged.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    private let lines = NIOLockedValueBox<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        let fields = (metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        lines.withLockedValue { $0.append("\(level) \(message) \(fields)") }
    }

    var messages: [String] { lines.withLockedValue { $0 } }

    var logger: Logger { Logger(label: "recorded") { _ in self } }
}
