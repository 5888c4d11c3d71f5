import FoundationEssentials
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarTLS
import SidecarModel

/// A JWT to present to `/v1/acl/login`, and when it stops being valid (for renewal timing).
package struct BearerToken: Sendable {
    var jwt: String
    var expiresAt: Date?

    init(jwt: String, expiresAt: Date?) {
        self.jwt = jwt
        self.expiresAt = expiresAt
    }
}

/// Where login JWTs come from; asked again before every login.
package protocol BearerTokenProvider: Sendable {
    func fetch() async throws -> BearerToken
    /// For logs.
    var summary: String { get }
}

struct BearerTokenError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `--login-bearer-token-file`: a JWT in a file (e.g. a projected service-account token),
/// re-read on each login. Its `exp` claim is read, unverified, only to time the renewal.
package struct BearerTokenFile: BearerTokenProvider {
    let path: String

    package init(path: String) {
        self.path = path
    }

    package func fetch() async throws -> BearerToken {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw BearerTokenError("cannot read the bearer token file \(path): \(FileSystemErrorText.describe(error))")
        }
        let jwt = text.trimmingWhitespace()
        guard !jwt.isEmpty else { throw BearerTokenError("the bearer token file \(path) is empty") }
        return BearerToken(jwt: jwt, expiresAt: Self.unverifiedExpiry(of: jwt))
    }

    package var summary: String { "bearer token file \(path)" }

    /// The `exp` claim of a compact JWS, without checking anything (Consul does that).
    static func unverifiedExpiry(of jwt: String) -> Date? {
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var base64 = String(parts[1]).replacing("-", with: "+").replacing("_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let data = Data(base64Encoded: base64),
              let exp = JSONValue.parsed(data)?["exp"]?.doubleValue else { return nil }
        return Date(timeIntervalSince1970: exp)
    }
}

/// `--azure-managed-identity`: the VM's managed-identity token from the Azure Instance
/// Metadata Service (`GET <imds>?api-version=2018-02-01&resource=<aud>`, `Metadata: true`).
package struct AzureManagedIdentity: BearerTokenProvider {
    package static let defaultIMDSURL = "http://169.254.169.254/metadata/identity/oauth2/token"
    package static let defaultResource = "https://management.azure.com/"

    let imdsURL: String
    let resource: String

    package init(imdsURL: String = Self.defaultIMDSURL, resource: String = Self.defaultResource) {
        self.imdsURL = imdsURL
        self.resource = resource
    }

    package var summary: String { "Azure managed identity (resource \(resource))" }

    package func fetch() async throws -> BearerToken {
        guard var components = URLComponents(string: imdsURL) else { throw BearerTokenError("--azure-imds-url \(imdsURL) is not a URL") }
        components.queryItems = (components.queryItems ?? []) + [URLQueryItem(name: "api-version", value: "2018-02-01"),
                                                                 URLQueryItem(name: "resource", value: resource)]
        // URLComponents leaves ':' and '/' in query values; IMDS wants the resource encoded.
        components.percentEncodedQuery = components.percentEncodedQuery?
            .replacing(":", with: "%3A").replacing("/", with: "%2F")
        guard let host = components.host, !host.isEmpty, ["http", "https"].contains(components.scheme ?? "") else {
            throw BearerTokenError("--azure-imds-url \(imdsURL) is not an http:// or https:// URL")
        }
        let secure = components.scheme == "https"
        var exchange = HTTPExchange(endpoint: .tcp(host: host, port: components.port ?? (secure ? 443 : 80)))
        exchange.maxBodyBytes = 1 << 20
        let status: Int
        let body: Data
        do {
            if secure { exchange.tls = (try HTTPSClientContext(HTTPSClientTrust()), host) }
            var headers = HTTPHeaders()
            headers.add(name: "Metadata", value: "true")
            let target = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath)
                + (components.percentEncodedQuery.map { "?" + $0 } ?? "")
            let reply = try await exchange.perform(.GET, target: target, headers: headers, body: nil, timeout: .seconds(10),
                                                   on: MultiThreadedEventLoopGroup.singleton)
            status = reply.status
            body = Data(reply.body.readableBytesView)
        } catch {
            throw BearerTokenError("managed identity token from \(imdsURL): \(error)")
        }
        guard status == 200 else {
            // IMDS error bodies are `{"error", "error_description"}`: no secret in them.
            let text = String(decoding: body.prefix(300), as: UTF8.self).trimmingWhitespace()
            throw BearerTokenError("managed identity token from \(imdsURL): HTTP \(status): \(text)")
        }
        return try Self.decode(body, source: imdsURL)
    }

    /// `{"access_token", "expires_on", ...}`; expires_on is unix seconds, a string in the
    /// 2018-02-01 API and a number in some SDK stand-ins, so both are read. Errors never quote
    /// the body (it holds the token).
    static func decode(_ body: Data, source: String) throws -> BearerToken {
        guard let object = JSONValue.parsed(body), object.objectValue != nil else {
            throw BearerTokenError("managed identity token from \(source): the answer is not a JSON object")
        }
        guard let jwt = object["access_token"]?.stringValue, !jwt.isEmpty else {
            throw BearerTokenError("managed identity token from \(source): no access_token in the answer")
        }
        var expiresAt: Date?
        if let text = object["expires_on"]?.stringValue, let seconds = Double(text) {
            expiresAt = Date(timeIntervalSince1970: seconds)
        } else if let seconds = object["expires_on"]?.doubleValue {
            expiresAt = Date(timeIntervalSince1970: seconds)
        }
        return BearerToken(jwt: jwt, expiresAt: expiresAt ?? BearerTokenFile.unverifiedExpiry(of: jwt))
    }
}
