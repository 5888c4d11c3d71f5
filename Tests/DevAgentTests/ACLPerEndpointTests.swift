@testable import DevAgent
import Foundation
import Testing

/// The dev agent refuses what Consul refuses: a login token is a service identity, checked per
/// endpoint with Consul's rules, so a sidecar that starts here starts with the same
/// least-privilege token on a real agent.
@Suite("Dev agent: ACLs per endpoint, as Consul grants them")
struct ACLPerEndpointTests {
    static func agentWithLogin(aclDefaultPolicy: String = "deny") async throws -> (TestAgent, token: [String: String]) {
        let issuer = try DevJWTIssuer(.es256)
        let agent = try await TestAgent.start {
            $0.aclToken = "root-token"
            $0.aclDefaultPolicy = aclDefaultPolicy
            $0.authMethods = [DevAgentAuthMethod(name: "jwt", jwtValidationPubKeys: [issuer.publicKeyPEM])]
        }
        try agent.agent.registerService(json: #"{"Name": "backup-agent", "Port": 9000, "Connect": {"SidecarService": {}}}"#)
        try agent.agent.registerService(json: #"{"Name": "storage", "Port": 9100, "Connect": {"SidecarService": {}}}"#)
        let jwt = try issuer.sign(DevJWTIssuer.claims(subject: "backup-agent", audience: "a", issuer: "i"))
        let login = try await agent.post("/v1/acl/login", #"{"AuthMethod": "jwt", "BearerToken": "\#(jwt)"}"#).object()
        let secret = try #require(login["SecretID"] as? String)
        let accessor = try #require(login["AccessorID"] as? String)
        #expect(!accessor.isEmpty && accessor != secret)
        return (agent, ["X-Consul-Token": secret])
    }

    @Test("A service identity reads what the sidecar needs and nothing it must not: each answer as Consul's")
    func serviceIdentityMatrix() async throws {
        let (agent, token) = try await Self.agentWithLogin()
        let allowed: [(String, String, String?)] = [
            ("GET", "/v1/agent/services", nil),
            ("GET", "/v1/agent/service/backup-agent-sidecar-proxy", nil),
            ("GET", "/v1/agent/service/storage-sidecar-proxy", nil),                   // service_prefix "" read
            ("GET", "/v1/agent/connect/ca/leaf/backup-agent", nil),                    // service "backup-agent" write
            ("GET", "/v1/agent/connect/ca/roots", nil),                                 // no ACL needed
            ("GET", "/v1/health/connect/storage?passing=1", nil),
            ("GET", "/v1/connect/intentions/match?by=destination&name=storage", nil),  // intentions read via service read
            ("GET", "/v1/config/proxy-defaults", nil),                                  // readable by anyone
            ("GET", "/v1/config/service-defaults", nil),
            ("POST", "/v1/agent/connect/authorize", #"{"Target": "backup-agent", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/storage"}"#),
            ("PUT", "/v1/agent/service/register", #"{"Name": "backup-agent", "Port": 9001}"#),
        ]
        for (method, path, body) in allowed {
            let reply = try await http(method, agent.base + path, body: body, headers: token)
            #expect(reply.status == 200, "\(method) \(path): \(reply.status) \(reply.text)")
        }
        let refused: [(String, String, String?, String)] = [
            ("GET", "/v1/agent/self", nil, "'agent:read' on \"dev-node\""),
            ("GET", "/v1/agent/connect/ca/leaf/storage", nil, "'service:write' on \"storage\""),
            ("GET", "/v1/connect/ca/configuration", nil, "'operator:read'"),
            ("POST", "/v1/agent/connect/authorize", #"{"Target": "storage", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/backup-agent"}"#,
             "'service:write' on \"storage\""),
            ("PUT", "/v1/agent/service/register", #"{"Name": "storage", "Port": 9101}"#, "'service:write' on \"storage\""),
            ("PUT", "/v1/agent/service/register",
             #"{"Name": "impostor-proxy", "Kind": "connect-proxy", "Port": 21000, "Proxy": {"DestinationServiceName": "storage"}}"#,
             "'service:write' on \"impostor-proxy\""),
            ("PUT", "/v1/agent/service/deregister/storage", nil, "'service:write' on \"storage\""),
            ("PUT", "/v1/config", #"{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "*", "Action": "allow"}]}"#,
             "'intention:write' on \"storage\""),
            ("PUT", "/v1/config", #"{"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}"#, "'mesh:write'"),
        ]
        for (method, path, body, lacks) in refused {
            let reply = try await http(method, agent.base + path, body: body ?? (method == "GET" ? nil : ""), headers: token)
            #expect(reply.status == 403 && reply.text.hasPrefix("Permission denied: token with AccessorID '")
                    && reply.text.hasSuffix("lacks permission \(lacks)"), "\(method) \(path): \(reply.status) \(reply.text)")
        }
        #expect(try await agent.get("/v1/agent/service/storage", headers: token).status == 200, "the storage service is still there")
        #expect(try await http("PUT", agent.base + "/v1/agent/connect/authorize", body: "{}", headers: token).status == 405, "POST only")
        #expect(try await agent.get("/v1/agent/self", headers: ["X-Consul-Token": "root-token"]).status == 200)
    }

    @Test("No token is the anonymous token: lists come back filtered (and say so), reads are refused")
    func anonymous() async throws {
        let (agent, _) = try await Self.agentWithLogin()
        let health = try await agent.get("/v1/health/connect/storage")
        #expect(health.status == 200 && health.text == "[]" && health.headers["x-consul-results-filtered-by-acls"] == "true")
        #expect(try await agent.get("/v1/catalog/services").text == "{}")
        let leaf = try await agent.get("/v1/agent/connect/ca/leaf/storage")
        #expect(leaf.status == 403 && leaf.text.hasPrefix("Permission denied: anonymous token lacks permission 'service:write' on \"storage\"."))
        #expect(try await agent.get("/v1/agent/connect/ca/roots").status == 200)
    }

    @Test("Under the ACL default policy allow, what no rule grants falls to the default (as Consul's token resolution)")
    func defaultAllow() async throws {
        let (agent, token) = try await Self.agentWithLogin(aclDefaultPolicy: "allow")
        #expect(try await agent.get("/v1/agent/self", headers: token).status == 200)
        #expect(try await agent.get("/v1/agent/connect/ca/leaf/storage", headers: token).status == 200)
        #expect(try await agent.get("/v1/agent/self").headers["x-consul-default-acl-policy"] == "allow")
    }

    @Test("Every answer carries X-Consul-Default-ACL-Policy: the ACL default policy, allow while ACLs are off")
    func defaultPolicyHeader() async throws {
        let (secured, token) = try await Self.agentWithLogin()
        for reply in [try await secured.get("/v1/agent/services", headers: token), try await secured.get("/v1/agent/self", headers: token),
                      try await secured.get("/v1/nowhere"), try await secured.get("/v1/agent/services", headers: ["X-Consul-Token": "wrong"])] {
            #expect(reply.headers["x-consul-default-acl-policy"] == "deny", "\(reply.status) \(reply.text)")
        }
        let open = try await TestAgent.start { $0.defaultIntentionPolicy = "" }
        let reply = try await open.get("/v1/agent/self")
        #expect(reply.headers["x-consul-default-acl-policy"] == "allow")
        let debug = try #require(try reply.object()["DebugConfig"] as? [String: Any])
        #expect(debug["DefaultIntentionPolicy"] as? String == "", "unset, as configured: the ACL default decides")
    }

    @Test("Query strings read as Go reads them: '+' is a space, the first of repeated values wins")
    func queryDecoding() async throws {
        let agent = try await TestAgent.start()
        let spaced = try await agent.get("/v1/connect/intentions/match?by=destination&name=nightly+backups")
        #expect(try spaced.object().keys.sorted() == ["nightly backups"], "\(spaced.text)")
        let repeated = try await agent.get("/v1/connect/intentions/match?by=destination&by=source&name=storage")
        #expect(repeated.status == 200, "\(repeated.text)")
        let percent = try await agent.get("/v1/connect/intentions/match?by=destination&name=a%2Bb")
        #expect(try percent.object().keys.sorted() == ["a+b"], "\(percent.text)")
    }
}

/// An independent client: py-consul (PyPI) decodes every answer its own way and raises on
/// Consul's error shapes, so a stand-in that answers differently fails here.
@Suite("Dev agent through py-consul")
struct PyConsulTests {
    @Test("Registration, CA, blocking health, config entries, intention match, ACL login and logout")
    func pyConsul() async throws {
        let issuer = try DevJWTIssuer(.es256)
        let agent = try await TestAgent.start {
            $0.aclToken = "root-token"
            $0.authMethods = [DevAgentAuthMethod(name: "jwt", jwtValidationPubKeys: [issuer.publicKeyPEM])]
        }
        let jwt = try issuer.sign(DevJWTIssuer.claims(subject: "backup-agent", audience: "a", issuer: "i"))
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/py-consul-check.py").path
        let port = String(agent.base.split(separator: ":").last ?? "")
        let result = try await runCommand("/usr/bin/env", ["python3", script, port, "root-token", "jwt", jwt])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.components(separatedBy: "\n").filter { $0.hasPrefix("ok ") }.count == 6, "\(result.output)")
    }
}
