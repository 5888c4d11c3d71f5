@testable import DevAgent
import Foundation
import NIOConcurrencyHelpers
import Testing
import TestSupport
@testable import SidecarModel

private let audience = "https://management.azure.com/"
private let issuerURL = "https://sts.windows.net/tenant-1/"

@Suite("Dev agent: jwt auth method for /v1/acl/login")
struct JWTAuthMethodTests {
    static func agent(_ issuers: [DevJWTIssuer], tokenTTL: TimeInterval? = nil,
                      clock: @escaping @Sendable () -> Date = { Date() }) async throws -> TestAgent {
        var method = DevAgentAuthMethod(name: "azure-msi", jwtValidationPubKeys: issuers.map(\.publicKeyPEM))
        method.boundAudiences = [audience]
        method.boundIssuer = issuerURL
        method.maxTokenTTL = tokenTTL
        return try await TestAgent.start {
            $0.aclToken = "root-token"
            $0.authMethods = [method]
            $0.clock = clock
        }
    }

    static func login(_ agent: TestAgent, _ jwt: String, method: String = "azure-msi") async throws -> Reply {
        try await agent.post("/v1/acl/login", #"{"AuthMethod": "\#(method)", "BearerToken": "\#(jwt)", "Meta": {"host": "vm-1"}}"#)
    }

    @Test("ES256 and RS256 tokens from the bound issuer for the bound audience log in as the sub's service")
    func validTokensAccepted() async throws {
        let ec = try DevJWTIssuer(.es256), rsa = try DevJWTIssuer(.rs256)
        let agent = try await Self.agent([ec, rsa])
        try await withTeardown({ await agent.agent.stop() }) {
            for issuer in [ec, rsa] {
                var claims = DevJWTIssuer.claims(subject: "backup-agent", audience: audience, issuer: issuerURL)
                claims["aud"] = .array([.string("other"), .string(audience)])  // aud may be an array
                let reply = try await Self.login(agent, try issuer.sign(claims))
                #expect(reply.status == 200, "\(issuer.algorithm): \(reply.text)")
                let token = try reply.object()
                let secret = try #require(token["SecretID"] as? String)
                #expect((token["ServiceIdentities"] as? [[String: Any]])?.first?["ServiceName"] as? String == "backup-agent")
                #expect(token["AuthMethod"] as? String == "azure-msi")
                #expect(token["ExpirationTime"] == nil, "no MaxTokenTTL: the token does not expire")
                #expect((token["Meta"] as? [String: String]) == ["host": "vm-1"])
                #expect(try await agent.get("/v1/agent/connect/ca/roots", headers: ["X-Consul-Token": secret]).status == 200)
            }
        }
    }

    @Test("Refused with 403 and the reason: wrong key, audience, issuer, expired, not yet valid, alg none/HS256, unknown method, tampered claims")
    func invalidTokensRefused() async throws {
        let trusted = try DevJWTIssuer(.es256), stranger = try DevJWTIssuer(.es256), rsaStranger = try DevJWTIssuer(.rs256)
        let agent = try await Self.agent([trusted])
        try await withTeardown({ await agent.agent.stop() }) {
            let good = DevJWTIssuer.claims(subject: "backup-agent", audience: audience, issuer: issuerURL)
            func with(_ key: String, _ value: JSON) -> [String: JSON] {
                var claims = good
                claims[key] = value
                return claims
            }
            let now = Int(Date().timeIntervalSince1970)
            let validJWT = try trusted.sign(good)
            let parts = validJWT.split(separator: ".")
            let tamperedPayload = try trusted.sign(with("sub", .string("storage"))).split(separator: ".")[1]
            let cases: [(String, String, String)] = [
                ("wrong signature", try stranger.sign(good), "no configured public key validates"),
                ("RSA key not configured", try rsaStranger.sign(good), "no configured public key validates"),
                ("tampered claims", "\(parts[0]).\(tamperedPayload).\(parts[2])", "no configured public key validates"),
                ("wrong audience", try trusted.sign(with("aud", .string("https://vault.azure.net"))), "bound audiences"),
                ("wrong issuer", try trusted.sign(with("iss", .string("https://evil.example/"))), "bound issuer"),
                ("aud list with a non-string", try trusted.sign(with("aud", .array([.string(audience), .int(7)]))), "bound audiences"),
                ("expired", try trusted.sign(with("exp", .int(now - 600))), "expired"),
                ("not yet valid", try trusted.sign(with("nbf", .int(now + 600))), "not valid yet"),
                ("alg none", "\(try trusted.sign(good, alg: "none").split(separator: ".").prefix(2).joined(separator: "."))." , "unsupported signing algorithm \"none\""),
                ("HS256", try trusted.sign(good, alg: "HS256"), "unsupported signing algorithm \"HS256\""),
                ("not a JWT", "garbage", "not a compact JWS"),
                ("no service claim", try trusted.sign(with("sub", .int(42))), "claim \"sub\""),
            ]
            for (name, jwt, reason) in cases {
                let reply = try await Self.login(agent, jwt)
                #expect(reply.status == 403, "\(name)")
                #expect(reply.text.hasPrefix("Permission denied: ") && reply.text.contains(reason), "\(name): \(reply.text)")
            }
            let unknown = try await Self.login(agent, validJWT, method: "other")
            #expect(unknown.status == 403 && unknown.text.contains("not found"))
            #expect(agent.agent.loginCount == 0)
            #expect(try await Self.login(agent, validJWT).status == 200, "the same agent still accepts a good token")
        }
    }

    @Test("Logout revokes the token; a token past MaxTokenTTL gets 403 ACL not found")
    func logoutAndExpiry() async throws {
        let issuer = try DevJWTIssuer(.es256)
        // The agent's clock is stepped, not slept past: on a loaded machine a real 1 s TTL
        // could lapse between login and the first use.
        let skew = NIOLockedValueBox<TimeInterval>(0)
        let agent = try await Self.agent([issuer], tokenTTL: 600, clock: { Date() + skew.withLockedValue { $0 } })
        try await withTeardown({ await agent.agent.stop() }) {
            let jwt = try issuer.sign(DevJWTIssuer.claims(subject: "storage", audience: audience, issuer: issuerURL))
            let first = try #require(try await Self.login(agent, jwt).object()["SecretID"] as? String)
            let second = try await Self.login(agent, jwt).object()
            let secret = try #require(second["SecretID"] as? String)
            let expiration = try #require(second["ExpirationTime"] as? String)
            #expect(expiration.contains("T") && expiration.hasSuffix("Z"))
            #expect(first != secret)

            #expect(try await agent.post("/v1/acl/logout", "", headers: ["X-Consul-Token": first]).status == 200)
            let revoked = try await agent.get("/v1/agent/services", headers: ["X-Consul-Token": first])
            #expect(revoked.status == 403 && revoked.text == "ACL not found")
            #expect(!agent.agent.accepts(token: first))

            #expect(try await agent.get("/v1/agent/services", headers: ["X-Consul-Token": secret]).status == 200)
            skew.withLockedValue { $0 = 300 }
            #expect(try await agent.get("/v1/agent/services", headers: ["X-Consul-Token": secret]).status == 200,
                    "still inside MaxTokenTTL")
            skew.withLockedValue { $0 = 700 }
            let expired = try await agent.get("/v1/agent/services", headers: ["X-Consul-Token": secret])
            #expect(expired.status == 403 && expired.text == "ACL not found")
        }
    }

    @Test("An auth method from -config-dir in Consul's JSON shape; a bad key names the file")
    func configDirectoryAuthMethod() async throws {
        let issuer = try DevJWTIssuer(.rs256)
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let method: [String: Any] = ["AuthMethod": [
            "Name": "azure-msi", "Type": "jwt", "MaxTokenTTL": "10m",
            "Config": ["JWTValidationPubKeys": [issuer.publicKeyPEM], "BoundAudiences": [audience], "BoundIssuer": issuerURL,
                       "ClaimMappings": ["xms_mirid": "service_name"]],
        ]]
        try JSONSerialization.data(withJSONObject: method).write(to: directory.appendingPathComponent("auth.json"))
        let agent = try await TestAgent.start {
            $0.aclToken = "root-token"
            $0.configDirectory = directory.path
        }
        try await withTeardown({ await agent.agent.stop() }) {
            var claims = DevJWTIssuer.claims(subject: "0000-object-id", audience: audience, issuer: issuerURL)
            claims["xms_mirid"] = .string("backup-agent")
            let token = try await Self.login(agent, try issuer.sign(claims)).object()
            #expect((token["ServiceIdentities"] as? [[String: Any]])?.first?["ServiceName"] as? String == "backup-agent")
            #expect(token["ExpirationTime"] is String)

            let broken = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: broken) }
            try Data(#"{"AuthMethod": {"Name": "x", "Type": "jwt", "Config": {"JWTValidationPubKeys": ["not a key"]}}}"#.utf8)
                .write(to: broken.appendingPathComponent("bad-auth.json"))
            await #expect {
                _ = try await TestAgent.start { $0.configDirectory = broken.path }
            } throws: { "\($0)".contains("bad-auth.json") && "\($0)".contains("JWTValidationPubKeys[0]") }
        }
    }
}
