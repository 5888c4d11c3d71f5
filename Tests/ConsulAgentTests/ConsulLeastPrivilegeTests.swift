import Foundation
import NIOCore
@testable import ConsulAgent
@testable import DevAgent
@testable import SidecarCore
@testable import SidecarTLS
import Testing
import TestFixtures
import TestSupport
@testable import SidecarModel

/// Issue 17, point 1: a sidecar runs with what a service identity grants (no agent:read), as a
/// login token or `-bind-type service` gives it on a real agent.
@Suite("Consul mode with least-privilege tokens")
struct ConsulLeastPrivilegeTests {
    /// A service-identity token for `service`, minted by the dev agent's jwt auth method.
    static func login(_ mesh: ConsulMesh, issuer: DevJWTIssuer, as service: String) async throws -> String {
        let client = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: mesh.port)),
                                      eventLoopGroup: testGroup)
        return try await withTeardown({ await client.shutdown() }) {
            let jwt = try issuer.sign(DevJWTIssuer.claims(subject: service, audience: "a", issuer: "i"))
            let body = try JSONSerialization.data(withJSONObject: ["AuthMethod": "jwt", "BearerToken": jwt])
            let answer = try await client.post("/v1/acl/login", body: body, token: .none)
            let token = try #require(try JSONSerialization.jsonObject(with: answer.body) as? [String: Any])
            return try #require(token["SecretID"] as? String)
        }
    }

    @Test("Two sidecars on service-identity login tokens only (agent/self refused) start, agree on the datacenter and carry traffic")
    func serviceIdentityTokensOnly() async throws {
        let issuer = try DevJWTIssuer(.es256)
        let mesh = try await ConsulMesh.start(aclToken: "root-token",
                                              authMethods: [DevAgentAuthMethod(name: "jwt", jwtValidationPubKeys: [issuer.publicKeyPEM])])
        try await withTeardown({ await mesh.stop() }) {
            let backend = try await TestBackend(.echo, group: testGroup)
            try await withTeardown({ await backend.stop() }) {
                let upstreamPort = freeLocalPort()
                try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: freeLocalPort())
                try mesh.registerService(id: "backup-agent", name: "backup-agent", port: freeLocalPort(), sidecarPort: freeLocalPort(),
                                         upstreams: [("storage", upstreamPort)])
                try mesh.allow("backup-agent", to: "storage")
                let storageToken = try await Self.login(mesh, issuer: issuer, as: "storage")
                let agentToken = try await Self.login(mesh, issuer: issuer, as: "backup-agent")

                let storageAudit = MemoryAuditSink()
                let (storageProxy, storage) = try await mesh.sidecar(for: "storage", audit: storageAudit, token: storageToken)
                try await withTeardown({ await storageProxy.stop(); await storage.stop() }) {
                    let (agentProxy, agent) = try await mesh.sidecar(for: "backup-agent", token: agentToken)
                    try await withTeardown({ await agentProxy.stop(); await agent.stop() }) {
                        #expect(await eventually(timeout: 30) { storage.readiness.ready && agent.upstreamInstanceList["storage"]?.count == 1 })
                        #expect(await echoRoundTrip(port: upstreamPort))
                        let allowed = try #require(storageAudit.events.first { $0.kind == .authorization && $0.decision == "allow" })
                        #expect(allowed.source?.contains("/dc/dc1/svc/backup-agent") == true, "\(String(describing: allowed.source))")
                    }
                }
            }
        }
    }

    @Test("ACLs off and no DefaultIntentionPolicy: no matching intention decides what X-Consul-Default-ACL-Policy says (allow)")
    func defaultFromHeader() async throws {
        let mesh = try await ConsulMesh.start(defaultIntentionPolicy: "")
        let pair = try await ConsulPair.start(mesh, allow: false)
        await withTeardown({ await pair.stop() }) {
            #expect(await pair.ready())
            #expect(await echoRoundTrip(port: pair.upstreamPort), "Consul would allow: so do we")
        }
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

    @Test("Upstreams without a local bind, peered or in another namespace are skipped with a warning; the others serve")
    func registrationShapes() async throws {
        let mesh = try await ConsulMesh.start()
        try await withTeardown({ await mesh.stop() }) {
            let backend = try await TestBackend(.echo, group: testGroup)
            try await withTeardown({ await backend.stop() }) {
                try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: freeLocalPort())
                try mesh.allow("backup-agent", to: "storage")
                let upstreamPort = freeLocalPort()
                try mesh.agent.registerService(json: """
                    {"id": "backup-agent", "name": "backup-agent", "port": \(freeLocalPort()), "address": "127.0.0.1",
                     "connect": {"sidecar_service": {"port": \(freeLocalPort()), "proxy": {"upstreams": [
                       {"destination_name": "metadata-db"},
                       {"destination_name": "storage", "destination_peer": "dc-west", "local_bind_port": \(freeLocalPort())},
                       {"destination_name": "storage", "destination_namespace": "ops", "local_bind_port": \(freeLocalPort())},
                       {"destination_name": "storage", "local_bind_port": \(upstreamPort), "config": {"connect_timeout_ms": 2000}}]}}}}
                    """)
                let (storageProxy, storage) = try await mesh.sidecar(for: "storage")
                try await withTeardown({ await storageProxy.stop(); await storage.stop() }) {
                    let log = RecordingLogHandler()
                    let (agentProxy, agent) = try await mesh.sidecar(for: "backup-agent", logger: log.logger)
                    try await withTeardown({ await agentProxy.stop(); await agent.stop() }) {
                        #expect(agent.definition.upstreams.map(\.listenerName) == ["upstream:storage"])
                        #expect(await eventually(timeout: 30) { storage.readiness.ready && agent.upstreamInstanceList["storage"]?.count == 1 })
                        #expect(await echoRoundTrip(port: upstreamPort))
                        let skipped = log.messages.filter { $0.contains("upstream skipped") }
                        #expect(skipped.count == 3, "\(skipped)")
                        #expect(skipped.contains { $0.contains("metadata-db") && $0.contains("transparent-proxy") })
                        #expect(skipped.contains { $0.contains("peering") && $0.contains("dc-west") })
                        #expect(skipped.contains { $0.contains("\"ops\"") })
                        try await agent.refreshMetrics(on: testGroup.next()).get()
                        let exposition = try #require(agent.settings.metrics).exposition()
                        #expect(exposition.contains("backup_sidecar_upstreams_skipped 3"), "\(exposition)")
                    }
                }
            }
        }
    }

    @Test("The same upstream name in two datacenters: two listeners, two instance lists, two expected identities")
    func sameNameTwoDatacenters() async throws {
        func upstream(_ datacenter: String?) -> Upstream {
            Upstream(destinationName: "storage", tenancy: .default,
                     datacenter: datacenter, localBindAddress: "127.0.0.1", localBindPort: freeLocalPort(), connectTimeoutMs: 2000)
        }
        let definition = ProxyDefinition(id: "backup-agent-sidecar-proxy", name: "backup-agent-sidecar-proxy", address: "127.0.0.1",
                                         port: nil, destinationServiceName: "backup-agent", destinationServiceID: nil,
                                         localServiceAddress: "127.0.0.1", localServicePort: nil, config: ProxyConfig(),
                                         upstreams: [upstream(nil), upstream("dc2")])
        let local = Endpoint(host: "127.0.0.1", port: 1, datacenter: "dc1")
        let settings = SidecarSettings(definition: definition, credentials: try TestCertificates.credentials("backup-agent"),
                                       intentions: IntentionSet([], defaultAction: .deny), upstreamEndpoints: ["storage": [local]],
                                       audit: MemoryAuditSink(), logger: quietLogger, metrics: SidecarMetrics())
        let sidecar = try Sidecar(settings: settings, group: testGroup)
        try await sidecar.start()
        await withTeardown({ await sidecar.stop() }) {
            #expect(sidecar.boundAddress(of: "upstream:storage") != nil && sidecar.boundAddress(of: "upstream:storage@dc2") != nil)
            let remote = Endpoint(host: "127.0.0.2", port: 2, datacenter: "dc2")
            sidecar.updateInstances([remote], for: "storage@dc2")
            #expect(sidecar.upstreamInstanceList["storage"] == [local], "the dc2 answer does not replace the local list")
            #expect(sidecar.upstreamInstanceList["storage@dc2"] == [remote])
        }
    }
}
