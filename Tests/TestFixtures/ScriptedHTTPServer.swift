import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
@testable import SidecarHTTP

/// The package's HTTP/1.1 server on 127.0.0.1:0 whose every answer comes from `respond`, so tests can
/// play an agent that misbehaves in exactly one way (truncated JSON, 500, 403, ...).
package final class ScriptedHTTPServer: Sendable {
    package struct Reply: Sendable {
        package var status: HTTPResponseStatus = .ok
        package var headers: [(String, String)] = []
        package var body: String
        /// Held back this long first (a blocking query that waited).
        package var delay: TimeAmount = .zero

        package init(status: HTTPResponseStatus = .ok, headers: [(String, String)] = [], body: String, delay: TimeAmount = .zero) {
            self.status = status
            self.headers = headers
            self.body = body
            self.delay = delay
        }
    }

    private let server: HTTPServer
    private let requestLog: NIOLockedValueBox<[String]>
    package var port: Int { server.port }
    /// "METHOD uri" of every request, the X-Consul-Token each carried, and any Metadata header.
    package var requests: [String] { requestLog.withLockedValue { $0 } }

    /// On 127.0.0.1:0, or on a unix socket at `unixSocketPath`.
    package init(group: EventLoopGroup, unixSocketPath: String? = nil,
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

    package func stop() async { await server.stop() }
}

/// Collects log messages (message and metadata) so tests can check that a failure was logged.
package final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    private let lines = NIOLockedValueBox<[String]>([])
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .info

    package init() {}

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        let fields = (metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        lines.withLockedValue { $0.append("\(level) \(message) \(fields)") }
    }

    package var messages: [String] { lines.withLockedValue { $0 } }

    package var logger: Logger { Logger(label: "recorded") { _ in self } }
}
