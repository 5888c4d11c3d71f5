import FoundationEssentials
import SidecarModel
import SidecarCore

/// How to reach the Consul agent, resolved from flags first and then the environment every
/// Consul tool honours (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...). Pure: no file or network I/O
/// except `readToken`, so the precedence rules are unit-tested.
package struct ConsulConnectionSettings: Equatable, Sendable {
    enum Transport: Equatable, Sendable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    var transport: Transport
    var useTLS: Bool
    /// The token to send, when it is not read from `tokenFile`.
    var token: String?
    /// Re-read before each request so a rotated token file takes effect without a restart;
    /// when set, it is what is sent (`resolve` keeps only the source Consul would use).
    var tokenFile: String?
    /// CONSUL_CACERT; wins over `caPath` (as go-rootcerts).
    var caFile: String?
    /// CONSUL_CAPATH: every PEM certificate in the directory is trusted.
    var caPath: String?
    /// CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified.
    var verifyTLS = true
    /// CONSUL_HTTP_AUTH: HTTP basic auth (`user` or `user:password`) on every call.
    var httpAuth: String?
    var clientCertFile: String?
    var clientKeyFile: String?
    /// The name to verify the agent's certificate against, when it differs from the address.
    var tlsServerName: String?
    /// CONSUL_NAMESPACE / CONSUL_PARTITION: `?ns=` / `?partition=` on every call that does not
    /// name its own.
    var namespace: String?
    var partition: String?

    init(transport: Transport = .tcp(host: "127.0.0.1", port: 8500), useTLS: Bool = false,
                token: String? = nil, tokenFile: String? = nil, caFile: String? = nil,
                clientCertFile: String? = nil, clientKeyFile: String? = nil, tlsServerName: String? = nil) {
        self.transport = transport
        self.useTLS = useTLS
        self.token = token
        self.tokenFile = tokenFile
        self.caFile = caFile
        self.clientCertFile = clientCertFile
        self.clientKeyFile = clientKeyFile
        self.tlsServerName = tlsServerName
    }

    /// Flags beat the environment, as in Consul's Go client. The token, in Consul's order:
    /// `-token-file`, `-token`, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_TOKEN (a file beats a
    /// token from the same place). CONSUL_HTTP_SSL=true makes even an explicit `http://`
    /// address HTTPS ("never revert to http if TLS was explicitly requested").
    package static func resolve(httpAddr: String?, token: String?, tokenFile: String?,
                               environment: [String: String]) throws -> ConsulConnectionSettings {
        func env(_ name: String) -> String? {
            guard let value = environment[name]?.trimmingWhitespace(), !value.isEmpty else { return nil }
            return value
        }
        func bool(_ name: String) throws -> Bool? {
            guard let text = env(name) else { return nil }
            guard let flag = parseBool(text) else { throw ConsulSettingsError("\(name)=\(text) is not a boolean (true/false/1/0)") }
            return flag
        }
        var settings = ConsulConnectionSettings()
        let sslFromEnv = try bool("CONSUL_HTTP_SSL") ?? false
        let address = httpAddr ?? env("CONSUL_HTTP_ADDR") ?? "127.0.0.1:8500"
        (settings.transport, settings.useTLS) = try parseAddress(address, defaultTLS: sslFromEnv)
        if sslFromEnv, case .tcp = settings.transport { settings.useTLS = true }
        let nonEmpty = { (text: String?) in text.flatMap { $0.isEmpty ? nil : $0 } }
        if let file = nonEmpty(tokenFile) {
            settings.tokenFile = file
        } else if let token = nonEmpty(token) {
            settings.token = token
        } else if let file = env("CONSUL_HTTP_TOKEN_FILE") {
            settings.tokenFile = file
        } else {
            settings.token = env("CONSUL_HTTP_TOKEN")
        }
        settings.caFile = env("CONSUL_CACERT")
        settings.caPath = env("CONSUL_CAPATH")
        settings.clientCertFile = env("CONSUL_CLIENT_CERT")
        settings.clientKeyFile = env("CONSUL_CLIENT_KEY")
        settings.tlsServerName = env("CONSUL_TLS_SERVER_NAME")
        settings.verifyTLS = try bool("CONSUL_HTTP_SSL_VERIFY") ?? true
        settings.httpAuth = env("CONSUL_HTTP_AUTH")
        // Consul Enterprise tenancy, sent on every call as the Go client does (Consul CE
        // answers 400 to any, which is what an operator who set it there should see).
        settings.namespace = env("CONSUL_NAMESPACE")
        settings.partition = env("CONSUL_PARTITION")
        guard (settings.clientCertFile == nil) == (settings.clientKeyFile == nil) else {
            throw ConsulSettingsError("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set together")
        }
        return settings
    }

    /// The `Authorization` header value for `httpAuth` (`user` alone: an empty password).
    var basicAuthorization: String? {
        guard let httpAuth else { return nil }
        let pair = httpAuth.contains(":") ? httpAuth : httpAuth + ":"
        return "Basic " + Data(pair.utf8).base64EncodedString()
    }

    /// `host:port`, `http://host[:port]`, `https://host[:port]` or `unix:///path`, as Consul's
    /// own clients accept. Without a scheme, `defaultTLS` (CONSUL_HTTP_SSL) picks https.
    static func parseAddress(_ text: String, defaultTLS: Bool = false) throws -> (Transport, useTLS: Bool) {
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else { throw ConsulSettingsError("\(text): a unix socket address needs an absolute path (unix:///path)") }
            return (.unix(path: path), false)
        }
        var rest = Substring(text)
        var tls = defaultTLS
        var explicitScheme = false
        if let range = rest.firstRange(of: "://") {
            switch rest[..<range.lowerBound].lowercased() {
            case "http": tls = false
            case "https": tls = true
            default: throw ConsulSettingsError("\(text): unsupported scheme (use http://, https:// or unix://)")
            }
            explicitScheme = true
            rest = rest[range.upperBound...]
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.isEmpty, !rest.contains("/") else { throw ConsulSettingsError("\(text): expected HOST:PORT") }
        if let endpoint = Endpoint(parsing: String(rest)) {
            return (.tcp(host: endpoint.host, port: endpoint.port), tls)
        }
        // A bare host: with a scheme, its default port (as Consul's Go client); without, 8500.
        guard !rest.contains(":") || (rest.hasPrefix("[") && rest.hasSuffix("]")) else {
            throw ConsulSettingsError("\(text): expected HOST:PORT")
        }
        let host = rest.hasPrefix("[") ? String(rest.dropFirst().dropLast()) : String(rest)
        return (.tcp(host: host, port: explicitScheme ? (tls ? 443 : 80) : 8500), tls)
    }

    /// Go's strconv.ParseBool, which Consul's client uses for its environment.
    static func parseBool(_ text: String) -> Bool? {
        switch text {
        case "1", "t", "T", "true", "TRUE", "True": return true
        case "0", "f", "F", "false", "FALSE", "False": return false
        default: return nil
        }
    }

    /// The token to send now: the token file's content (trimmed), else the token.
    package func readToken() throws -> String? {
        guard let tokenFile else { return token }
        let text: String
        do {
            text = try String(contentsOfFile: tokenFile, encoding: .utf8)
        } catch {
            throw ConsulSettingsError("cannot read token file \(tokenFile): \(FileSystemErrorText.describe(error))")
        }
        let token = text.trimmingWhitespace()
        guard !token.isEmpty else { throw ConsulSettingsError("token file \(tokenFile) is empty") }
        return token
    }

    /// For logs: never the token itself.
    var summary: String { "\(addressSummary) (\(authSummary))" }

    var addressSummary: String {
        switch transport {
        case .tcp(let host, let port): return "\(useTLS ? "https" : "http")://\(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .unix(let path): return "unix://\(path)"
        }
    }

    var authSummary: String {
        var parts = [tokenFile.map { "token file \($0)" } ?? (token != nil ? "token" : "no token")]
        if httpAuth != nil { parts.append("basic auth") }
        if useTLS && !verifyTLS { parts.append("TLS NOT VERIFIED") }
        return parts.joined(separator: ", ")
    }
}

struct ConsulSettingsError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
