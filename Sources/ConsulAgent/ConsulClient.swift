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
    /// `X-Consul-Default-ACL-Policy` (on every answer; "allow" while ACLs are off): what no
    /// matching intention decides when the agent sets no DefaultIntentionPolicy.
    public var defaultACLPolicy: IntentionAction?
    public var body: Data
}

public enum ConsulRequestError: Error, CustomStringConvertible {
    /// The agent answered with a non-2xx status.
    case status(code: Int, path: String, body: String)
    /// No answer: refused, reset, timed out, TLS failure.
    case transport(path: String, reason: String)
    /// No ACL token to send: the login-backed token source has not logged in.
    case notLoggedIn(path: String, reason: String)

    public var description: String {
        switch self {
        case .status(let code, let path, let body):
            return "\(path): HTTP \(code)\(body.isEmpty ? "" : ": \(body)")"
        case .transport(let path, let reason):
            return "\(path): \(reason)"
        case .notLoggedIn(let path, let reason):
            return "\(path): no ACL token (login failed: \(reason))"
        }
    }

    /// Short label for metrics.
    public var kind: String {
        switch self {
        case .status(let code, _, _): return "http_\(code)"
        case .transport: return "unreachable"
        case .notLoggedIn: return "acl_login"
        }
    }

    /// Consul's answer for an unknown, revoked or expired token.
    var isACLNotFound: Bool {
        if case .status(403, _, let body) = self { return body.contains("ACL not found") }
        return false
    }
}

/// Which token a request carries.
public enum ConsulRequestToken: Sendable {
    /// The client's token source (every ordinary call).
    case fromSource
    /// None (`/v1/acl/login`).
    case none
    /// This one (`/v1/acl/logout` of a given token).
    case explicit(String)
}

/// The Consul HTTP API over async-http-client: the ACL token on every call, TLS per CONSUL_*
/// settings, unix sockets. Callers pass paths; this type knows nothing of the endpoints.
public final class ConsulClient: Sendable {
    public let settings: ConsulConnectionSettings
    public let tokenSource: any ConsulTokenSource
    private let http: HTTPClient
    /// Bodies beyond this are refused (a roots or intentions answer is a few hundred KB at most).
    private static let maxBodyBytes = 16 << 20

    /// `tokenSource` nil: the settings' token or token file.
    public init(settings: ConsulConnectionSettings, eventLoopGroup: any EventLoopGroup,
                tokenSource: (any ConsulTokenSource)? = nil) throws {
        self.settings = settings
        self.tokenSource = tokenSource ?? SettingsTokenSource(settings: settings)
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(5), read: nil)
        configuration.redirectConfiguration = .disallow
        if settings.useTLS {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.minimumTLSVersion = .tlsv12
            if let caFile = settings.caFile {
                tls.trustRoots = .file(caFile)
            } else if let caPath = settings.caPath {
                tls.trustRoots = .certificates(try Self.certificates(inDirectory: caPath))
            }
            if !settings.verifyTLS { tls.certificateVerification = .none }
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

    /// CONSUL_CAPATH as go-rootcerts reads it: every file under the directory holds PEM
    /// certificates; one that does not is an error naming it.
    static func certificates(inDirectory path: String) throws -> [NIOSSLCertificate] {
        guard let walker = FileManager.default.enumerator(atPath: path) else {
            throw ConsulSettingsError("CONSUL_CAPATH \(path): not a readable directory")
        }
        var certificates: [NIOSSLCertificate] = []
        for case let name as String in walker {
            let file = (path as NSString).appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            guard let found = try? NIOSSLCertificate.fromPEMFile(file), !found.isEmpty else {
                throw ConsulSettingsError("CONSUL_CAPATH: no PEM certificate in \(file)")
            }
            certificates += found
        }
        guard !certificates.isEmpty else { throw ConsulSettingsError("CONSUL_CAPATH \(path): no certificates") }
        return certificates
    }

    /// Ends the token source (a login session logs out) and releases the connections.
    public func shutdown() async {
        await tokenSource.shutdown(self)
        try? await http.shutdown()
    }

    /// For logs: the address and how requests authenticate, never a token.
    public var summary: String { "\(settings.addressSummary) (\(tokenSource.summary))" }

    /// GET `path` (already percent-encoded) with `query`; `timeout` bounds the whole call
    /// (a blocking query's wait plus Consul's jitter plus slack).
    public func get(_ path: String, query: [(String, String)] = [], timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.GET, path, query: query, body: nil, timeout: timeout)
    }

    public func put(_ path: String, body: Data?, timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.PUT, path, query: [], body: body, timeout: timeout)
    }

    public func post(_ path: String, body: Data?, token: ConsulRequestToken = .fromSource,
                     timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.POST, path, query: [], body: body, token: token, timeout: timeout)
    }

    private func send(_ method: HTTPMethod, _ path: String, query: [(String, String)], body: Data?,
                      token choice: ConsulRequestToken = .fromSource, timeout: TimeAmount) async throws -> ConsulResponse {
        let token: String?
        switch choice {
        case .fromSource: token = try await tokenSource.token(for: self)
        case .none: token = nil
        case .explicit(let explicit): token = explicit
        }
        do {
            return try await sendOnce(method, path, query: query, body: body, token: token, timeout: timeout)
        } catch let error as ConsulRequestError where error.isACLNotFound {
            // A revoked or expired login token: once more with a fresh one, when the source has one.
            guard case .fromSource = choice, let token, await tokenSource.rejected(token, by: self) else { throw error }
            let fresh = try await tokenSource.token(for: self)
            return try await sendOnce(method, path, query: query, body: body, token: fresh, timeout: timeout)
        }
    }

    private func sendOnce(_ method: HTTPMethod, _ path: String, query: [(String, String)], body: Data?, token: String?,
                          timeout: TimeAmount) async throws -> ConsulResponse {
        var request = HTTPClientRequest(url: url(path: path, query: query))
        request.method = method
        if let token {
            request.headers.add(name: "X-Consul-Token", value: token)
        }
        if let authorization = settings.basicAuthorization {
            request.headers.add(name: "Authorization", value: authorization)
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
            throw ConsulRequestError.status(code: Int(response.status.code), path: "\(method.rawValue) \(path)", body: text)
        }
        return ConsulResponse(status: Int(response.status.code),
                              index: response.headers.first(name: "X-Consul-Index").flatMap(BlockingIndex.parseHeader),
                              contentHash: response.headers.first(name: "X-Consul-ContentHash"),
                              defaultACLPolicy: response.headers.first(name: "X-Consul-Default-ACL-Policy")
                                  .flatMap { IntentionAction(rawValue: $0.lowercased()) },
                              body: data)
    }

    private func url(path: String, query: [(String, String)]) -> String {
        var query = query
        for (name, value) in [("ns", settings.namespace), ("partition", settings.partition)] {
            if let value, !query.contains(where: { $0.0 == name }) { query.append((name, value)) }
        }
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
