import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import SidecarCore

/// One answer from the agent: the body and the headers blocking queries need.
public struct ConsulResponse: Sendable {
    public var status: Int
    /// `X-Consul-Index`, nil when absent or unparsable.
    public var index: UInt64?
    /// `X-Consul-ContentHash` (hash-blocking endpoints).
    public var contentHash: String?
    public var body: Data
}

public enum ConsulRequestError: Error, CustomStringConvertible {
    /// The agent answered with a non-2xx status.
    case status(code: Int, path: String, body: String)
    /// No answer: refused, reset, timed out, TLS failure.
    case transport(path: String, reason: String)

    public var description: String {
        switch self {
        case .status(let code, let path, let body):
            return "GET \(path): HTTP \(code)\(body.isEmpty ? "" : ": \(body)")"
        case .transport(let path, let reason):
            return "\(path): \(reason)"
        }
    }

    /// Short label for metrics.
    public var kind: String {
        switch self {
        case .status(let code, _, _): return "http_\(code)"
        case .transport: return "unreachable"
        }
    }
}

/// The Consul HTTP API over async-http-client: the ACL token on every call, TLS per CONSUL_*
/// settings, unix sockets. Callers pass paths; this type knows nothing of the endpoints.
public final class ConsulClient: Sendable {
    public let settings: ConsulConnectionSettings
    private let http: HTTPClient
    /// Bodies beyond this are refused (a roots or intentions answer is a few hundred KB at most).
    private static let maxBodyBytes = 16 << 20

    public init(settings: ConsulConnectionSettings, eventLoopGroup: any EventLoopGroup) throws {
        self.settings = settings
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(5), read: nil)
        configuration.redirectConfiguration = .disallow
        if settings.useTLS {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.minimumTLSVersion = .tlsv12
            if let caFile = settings.caFile {
                tls.trustRoots = .file(caFile)
            }
            if let certFile = settings.clientCertFile, let keyFile = settings.clientKeyFile {
                do {
                    tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certFile).map { .certificate($0) }
                    tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
                } catch {
                    throw ConsulSettingsError("CONSUL_CLIENT_CERT/KEY (\(certFile), \(keyFile)): \(error)")
                }
            }
            configuration.tlsConfiguration = tls
            // Verify the certificate against CONSUL_TLS_SERVER_NAME while dialing the real address.
            if let serverName = settings.tlsServerName, case .tcp(let host, _) = settings.transport {
                configuration.dnsOverride = [serverName: host]
            }
        }
        http = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: configuration)
    }

    public func shutdown() async {
        try? await http.shutdown()
    }

    /// GET `path` (already percent-encoded) with `query`; `timeout` bounds the whole call
    /// (a blocking query's wait plus Consul's jitter plus slack).
    public func get(_ path: String, query: [(String, String)] = [], timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.GET, path, query: query, body: nil, timeout: timeout)
    }

    public func put(_ path: String, body: Data?, timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.PUT, path, query: [], body: body, timeout: timeout)
    }

    public func post(_ path: String, body: Data?, timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.POST, path, query: [], body: body, timeout: timeout)
    }

    private func send(_ method: HTTPMethod, _ path: String, query: [(String, String)], body: Data?,
                      timeout: TimeAmount) async throws -> ConsulResponse {
        var request = HTTPClientRequest(url: url(path: path, query: query))
        request.method = method
        if let token = try settings.readToken() {
            request.headers.add(name: "X-Consul-Token", value: token)
        }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            response = try await http.execute(request, timeout: timeout)
            bytes = try await response.body.collect(upTo: Self.maxBodyBytes)
        } catch {
            throw ConsulRequestError.transport(path: path, reason: "\(error)")
        }
        let data = Data(bytes.readableBytesView)
        guard (200..<300).contains(Int(response.status.code)) else {
            let text = String(decoding: data.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw ConsulRequestError.status(code: Int(response.status.code), path: path, body: text)
        }
        return ConsulResponse(status: Int(response.status.code),
                              index: response.headers.first(name: "X-Consul-Index").flatMap(BlockingIndex.parseHeader),
                              contentHash: response.headers.first(name: "X-Consul-ContentHash"),
                              body: data)
    }

    private func url(path: String, query: [(String, String)]) -> String {
        var components = URLComponents()
        components.percentEncodedPath = path
        if !query.isEmpty {
            components.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) }
        }
        let pathAndQuery = components.string ?? path
        switch settings.transport {
        case .unix(let socketPath):
            return URL(httpURLWithSocketPath: socketPath, uri: pathAndQuery)?.absoluteString ?? "http+unix://invalid\(pathAndQuery)"
        case .tcp(let host, let port):
            let name = settings.useTLS ? (settings.tlsServerName ?? host) : host
            let shownHost = name.contains(":") ? "[\(name)]" : name
            return "\(settings.useTLS ? "https" : "http")://\(shownHost):\(port)\(pathAndQuery)"
        }
    }

    /// One percent-encoded path segment (service names, IDs).
    public static func segment(_ text: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?#%")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
