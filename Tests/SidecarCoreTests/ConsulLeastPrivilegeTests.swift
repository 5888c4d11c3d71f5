import Foundation
import NIOCore
@testable import ConsulAgent
import DevAgent
@testable import SidecarCore
import SidecarTLS
import Testing

/// Issue 17, point 1: a sidecar runs with what a service identity grants (no agent:read), as a
/// login token or `-bind-type service` gives it on a real agent.
@Suite("Consul mode with least-privilege tokens")
struct ConsulLeastPrivilegeTests {
    /// A service-identity token for `service`, minted by the dev agent's jwt auth method.
    static func login(_ mesh: ConsulMesh, issuer: DevJWTIssuer, as service: String) async throws -> String {
        let client = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: mesh.port)),
                                      eventLoopGroup: testGroup)
        defer { Task { await client.shutdown() } }
        let jwt = try issuer.sign(DevJWTIssuer.claims(subject: service, audience: "a", issuer: "i"))
        let body = try JSONSerialization.data(withJSONObject: ["AuthMethod": "jwt", "BearerToken": jwt])
        let answer = try await client.post("/v1/acl/login", body: body, token: .none)
        let token = try #require(try JSONSerialization.jsonObject(with: answer.body) as? [String: Any])
        return try #require(token["SecretID"] as? String)
    }

    @Test("Two sidecars on service-identity login tokens only (agent/self refused) start, agree on the datacenter and carry traffic")
    func serviceIdentityTokensOnly() async throws {
        let issuer = try DevJWTIssuer(.es256)
        let mesh = try await ConsulMesh.start(aclToken: "root-token",
                                              authMethods: [DevAgentAuthMethod(name: "jwt", jwtValidationPubKeys: [issuer.publicKeyPEM])])
        defer { Task { await mesh.stop() } }
        let backend = try await TestBackend(.echo, group: testGroup)
        defer { Task { await backend.stop() } }
        let upstreamPort = freeLocalPort()
        try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: freeLocalPort())
        try mesh.registerService(id: "backup-agent", name: "backup-agent", port: freeLocalPort(), sidecarPort: freeLocalPort(),
                                 upstreams: [("storage", upstreamPort)])
        try mesh.allow("backup-agent", to: "storage")
        let storageToken = try await Self.login(mesh, issuer: issuer, as: "storage")
        let agentToken = try await Self.login(mesh, issuer: issuer, as: "backup-agent")

        let storageAudit = MemoryAuditSink()
        let (storageProxy, storage) = try await mesh.sidecar(for: "storage", audit: storageAudit, token: storageToken)
        defer { Task { await storageProxy.stop(); await storage.stop() } }
        let (agentProxy, agent) = try await mesh.sidecar(for: "backup-agent", token: agentToken)
        defer { Task { await agentProxy.stop(); await agent.stop() } }
        #expect(await eventually(timeout: 30) { storage.readiness.ready && agent.upstreamInstanceList["storage"]?.count == 1 })
        #expect(await echoRoundTrip(port: upstreamPort))
        let allowed = try #require(storageAudit.events.first { $0.kind == .authorization && $0.decision == "allow" })
        #expect(allowed.source?.contains("/dc/dc1/svc/backup-agent") == true, "\(String(describing: allowed.source))")
    }

    @Test("ACLs off and no DefaultIntentionPolicy: no matching intention decides what X-Consul-Default-ACL-Policy says (allow)")
    func defaultFromHeader() async throws {
        let mesh = try await ConsulMesh.start(defaultIntentionPolicy: "")
        let pair = try await ConsulPair.start(mesh, allow: false)
        defer { Task { await pair.stop() } }
        #expect(await pair.ready())
        #expect(await echoRoundTrip(port: pair.upstreamPort), "Consul would allow: so do we")
    }

    @Test("DefaultIntentionPolicy when readable, else the ACL default policy header, else --default-intention")
    func defaultIntentionPrecedence() {
        let agentSet = DefaultIntention(agentPolicy: .deny, fallback: .allow)
        #expect(agentSet.update(aclPolicy: .allow) == (.deny, true))
        #expect(agentSet.update(aclPolicy: .allow) == (.deny, false), "unchanged: not announced again")
        #expect(agentSet.source == "DefaultIntentionPolicy")

        let fromHeader = DefaultIntention(agentPolicy: nil, fallback: .deny)
        #expect(fromHeader.current == .deny && fromHeader.source == "--default-intention")
        #expect(fromHeader.update(aclPolicy: .allow) == (.allow, true))
        #expect(fromHeader.update(aclPolicy: nil) == (.allow, false), "an answer without the header keeps the last one")
        #expect(fromHeader.update(aclPolicy: .deny) == (.deny, true))
        #expect(fromHeader.source == "X-Consul-Default-ACL-Policy")
    }

    @Test("The datacenter comes from the registration, else the leaf's ServiceURI, else agent/self; none is an error")
    func datacenterSources() throws {
        let definition = ProxyDefinition(id: "p", name: "p", address: "127.0.0.1", port: 1, destinationServiceName: "s",
                                         destinationServiceID: nil, localServiceAddress: "127.0.0.1", localServicePort: 2,
                                         config: ProxyConfig(), upstreams: [])
        func registration(_ datacenter: String?) -> ConsulAgentService {
            ConsulAgentService(kind: "connect-proxy", id: "p", service: "p", contentHash: nil, proxy: definition, datacenter: datacenter)
        }
        func leaf(_ uri: String) -> ConsulLeafCertificate {
            ConsulLeafCertificate(serialNumber: "1", certPEM: "", privateKeyPEM: "", service: "s", serviceURI: uri,
                                  validAfter: "", validBefore: "", createIndex: 1, modifyIndex: 1)
        }
        let uri = "spiffe://td.consul/ns/default/dc/from-leaf/svc/s"
        let agent = ConsulAgentSelf(datacenter: "from-agent")
        #expect(try ConsulProxy.datacenter(registration: registration("from-registration"), leaf: leaf(uri), agent: agent) == "from-registration")
        #expect(try ConsulProxy.datacenter(registration: registration(nil), leaf: leaf(uri), agent: agent) == "from-leaf")
        #expect(try ConsulProxy.datacenter(registration: registration(nil), leaf: leaf("not a uri"), agent: agent) == "from-agent")
        #expect(throws: ConsulProxyError.self) { try ConsulProxy.datacenter(registration: registration(nil), leaf: leaf("x"), agent: nil) }
    }
}
