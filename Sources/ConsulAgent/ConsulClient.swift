import FoundationEssentials
import NIOCore
import NIOHTTP1
import SidecarTLS
import SidecarCore
import SidecarModel

/// One answer from the agent: the body and the headers blocking queries need.
struct ConsulResponse: Sendable {
    var status: Int
    /// `X-Consul-Index`, nil when absent or unparsable.
    var index: UInt64?
    /// `X-Consul-ContentHash` (hash-blocking endpoints).
    var contentHash: String?
    /// `X-Consul-Default-ACL-Policy` (on every answer; "allow" while ACLs are off): what no
    /// matching intention decides when the agent sets no DefaultIntentionPolicy.
    var defaultACLPolicy: IntentionAction?
    var body: Data
}

enum ConsulRequestError: Error, CustomStringConvertible {
    /// The agent answered with a non-2xx status.
    case status(code: Int, path: String, body: String)
    /// No answer: refused, reset, timed out, TLS failure.
    case transport(path: String, reason: String)
    /// No ACL token to send: the login-backed token source has not logged in.
    case notLoggedIn(path: String, reason: String)

    var description: String {
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
    var kind: String {
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
enum ConsulRequestToken: Sendable {
    /// The client's token source (every ordinary call).
    case fromSource
    /// None (`/v1/acl/login`).
    case none
    /// This one (`/v1/acl/logout` of a given token).
    case explicit(String)
}

/// The Consul HTTP API: the ACL token on every call, TLS per CONSUL_* settings (on system
/// OpenSSL, like the mesh), unix sockets. Callers pass paths; this type knows nothing of the endpoints.
package final class ConsulClient: Sendable {
    let settings: ConsulConnectionSettings
    let tokenSource: any ConsulTokenSource
    private let exchange: HTTPExchange
    private let eventLoopGroup: any EventLoopGroup

    /// `tokenSource` nil: the settings' token or token file.
    package init(settings: ConsulConnectionSettings, eventLoopGroup: any EventLoopGroup,
                tokenSource: (any ConsulTokenSource)? = nil) throws {
        self.settings = settings
        self.tokenSource = tokenSource ?? SettingsTokenSource(settings: settings)
        self.eventLoopGroup = eventLoopGroup
        var exchange: HTTPExchange
        switch settings.transport {
        case .tcp(let host, let port): exchange = HTTPExchange(endpoint: .tcp(host: host, port: port))
        case .unix(let path): exchange = HTTPExchange(endpoint: .unix(path: path))
        }
        // A roots or intentions answer is a few hundred KB at most.
        exchange.maxBodyBytes = 16 << 20
        if settings.useTLS, case .tcp(let host, _) = settings.transport {
            let trust = HTTPSClientTrust(caFile: settings.caFile, caDirectory: settings.caFile == nil ? settings.caPath : nil,
                                         verifyServer: settings.verifyTLS,
                                         clientCertificateFile: settings.clientCertFile, clientKeyFile: settings.clientKeyFile)
            do {
                // The certificate must name CONSUL_TLS_SERVER_NAME when set, else the address's host.
                exchange.tls = (try HTTPSClientContext(trust), settings.tlsServerName ?? host)
            } catch {
                throw ConsulSettingsError("Consul TLS settings (CONSUL_CACERT/CAPATH/CLIENT_CERT/CLIENT_KEY): \(error)")
            }
        }
        self.exchange = exchange
    }

    /// Ends the token source (a login session logs out). Connections live one request each.
    func shutdown() async {
        await tokenSource.shutdown(self)
    }

    /// For logs: the address and how requests authenticate, never a token.
    var summary: String { "\(settings.addressSummary) (\(tokenSource.summary))" }

    /// GET `path` (already percent-encoded) with `query`; `timeout` bounds the whole call
    /// (a blocking query's wait plus Consul's jitter plus slack).
    func get(_ path: String, query: [(String, String)] = [], timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.GET, path, query: query, body: nil, timeout: timeout)
    }

    func put(_ path: String, body: Data?, timeout: TimeAmount = .seconds(30)) async throws -> ConsulResponse {
        try await send(.PUT, path, query: [], body: body, timeout: timeout)
    }

    func post(_ path: String, body: Data?, token: ConsulRequestToken = .fromSource,
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
        var headers = HTTPHeaders()
        if let token { headers.add(name: "X-Consul-Token", value: token) }
        if let authorization = settings.basicAuthorization { headers.add(name: "Authorization", value: authorization) }
        if body != nil { headers.add(name: "Content-Type", value: "application/json") }
        let reply: HTTPExchange.Reply
        do {
            reply = try await exchange.perform(method, target: target(path: path, query: query), headers: headers,
                                               body: body.map(Array.init), timeout: timeout, on: eventLoopGroup)
        } catch {
            throw ConsulRequestError.transport(path: path, reason: "\(error)")
        }
        let data = Data(reply.body.readableBytesView)
        guard (200..<300).contains(reply.status) else {
            let text = String(decoding: data.prefix(300), as: UTF8.self).trimmingWhitespace()
            throw ConsulRequestError.status(code: reply.status, path: "\(method.rawValue) \(path)", body: text)
        }
        return ConsulResponse(status: reply.status,
                              index: reply.headers.first(name: "X-Consul-Index").flatMap(BlockingIndex.parseHeader),
                              contentHash: reply.headers.first(name: "X-Consul-ContentHash"),
                              defaultACLPolicy: reply.headers.first(name: "X-Consul-Default-ACL-Policy")
                                  .flatMap { IntentionAction(rawValue: $0.lowercased()) },
                              body: data)
    }

    /// The request target: `path` (already percent-encoded) and its query, plus the
    /// CONSUL_NAMESPACE/PARTITION defaults unless the query names its own.
    func target(path: String, query: [(String, String)]) -> String {
        var query = query
        for (name, value) in [("ns", settings.namespace), ("partition", settings.partition)] {
            if let value, !query.contains(where: { $0.0 == name }) { query.append((name, value)) }
        }
        var components = URLComponents()
        components.percentEncodedPath = path
        if !query.isEmpty {
            components.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) }
        }
        return components.string ?? path
    }

    /// One percent-encoded path segment (service names, IDs).
    static func segment(_ text: String) -> String {
        // ";" encoded too, as Foundation's urlPathAllowed (which this replaced) did.
        PercentEncoding.encodePathSegment(text) { $0 != UInt8(ascii: ";") && PercentEncoding.isSegmentCharacter($0) }
    }
}
