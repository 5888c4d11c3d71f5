@testable import DevAgent
import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1

/// Azure's Instance Metadata Service token endpoint on 127.0.0.1:0: answers
/// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...` with a JWT for
/// `subject`, signed by `issuer` (good), by a key nobody trusts, or an IMDS error.
package final class IMDSStandIn: Sendable {
    package enum Mode: Sendable {
        case good
        case untrustedKey
        case identityNotFound
    }

    package static let issuerURL = "https://sts.windows.net/test-tenant/"
    package let server: ScriptedHTTPServer
    package let mode: NIOLockedValueBox<Mode>
    private let served = NIOLockedValueBox<[String]>([])

    package init(issuer: DevJWTIssuer, subject: String, mode: Mode = .good) async throws {
        let modeBox = NIOLockedValueBox(mode)
        let served = self.served
        let stranger = try DevJWTIssuer(.es256)
        self.mode = modeBox
        server = try await ScriptedHTTPServer(group: testGroup) { method, uri in
            guard method == .GET, let components = URLComponents(string: uri),
                  components.path == "/metadata/identity/oauth2/token",
                  components.queryItems?.first(where: { $0.name == "api-version" })?.value == "2018-02-01",
                  let resource = components.queryItems?.first(where: { $0.name == "resource" })?.value else {
                return .init(status: .badRequest, body: #"{"error": "invalid_request", "error_description": "bad request"}"#)
            }
            let signer: DevJWTIssuer
            switch modeBox.withLockedValue({ $0 }) {
            case .identityNotFound:
                return .init(status: .badRequest, body: #"{"error": "invalid_request", "error_description": "Identity not found"}"#)
            case .untrustedKey: signer = stranger
            case .good: signer = issuer
            }
            let expiresOn = Int(Date().timeIntervalSince1970) + 3600
            let jwt = (try? signer.sign(DevJWTIssuer.claims(subject: subject, audience: resource, issuer: Self.issuerURL))) ?? ""
            served.withLockedValue { $0.append(jwt) }
            return .init(body: """
                {"access_token": "\(jwt)", "refresh_token": "", "expires_in": "3600", "expires_on": "\(expiresOn)",
                 "not_before": "\(expiresOn - 3600)", "resource": "\(resource)", "token_type": "Bearer"}
                """)
        }
    }

    package var url: String { "http://127.0.0.1:\(server.port)/metadata/identity/oauth2/token" }
    /// Every JWT handed out (to check none reaches a log).
    package var servedTokens: [String] { served.withLockedValue { $0 } }

    package func stop() async { await server.stop() }

    /// The jwt auth method that trusts `issuer` for Azure's default resource.
    package static func authMethod(_ issuer: DevJWTIssuer, tokenTTL: TimeInterval?) -> DevAgentAuthMethod {
        var method = DevAgentAuthMethod(name: "azure-msi", jwtValidationPubKeys: [issuer.publicKeyPEM])
        method.boundAudiences = ["https://management.azure.com/"]
        method.boundIssuer = issuerURL
        method.maxTokenTTL = tokenTTL
        return method
    }
}
