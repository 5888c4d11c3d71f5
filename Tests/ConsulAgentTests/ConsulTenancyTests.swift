import Foundation
import NIOCore
@testable import ConsulAgent
@testable import DevAgent
@testable import SidecarCore
@testable import SidecarTLS
import Testing
import TestFixtures
import TestSupport

/// Issue 17, point 4: Consul Enterprise namespaces. Every call names the registration's
/// namespace, upstreams dial the namespace they name (never a same-named service in default),
/// and intentions are decided for the namespace our leaf is in. Against a CE agent nothing
/// names a namespace, and CONSUL_NAMESPACE gets CE's refusal, not a silent default.
@Suite("Consul Enterprise namespaces")
struct ConsulTenancyTests {
    @Test("Namespaced sidecars: leaf, upstream and intentions all in the registration's namespace")
    func namespacedMesh() async throws {
        let mesh = try await ConsulMesh.start(enterprise: true)
        try await withTeardown({ await mesh.stop() }) {
            let vault = try await TestBackend(.echo, group: testGroup)
            try await withTeardown({ await vault.stop() }) {
                // A same-named service in the default namespace that never echoes: reaching it is misrouting.
                let decoy = try await TestBackend(.source(bytes: 7), group: testGroup)
                try await withTeardown({ await decoy.stop() }) {
                    let upstreamPort = freeLocalPort()
                    try mesh.agent.registerService(json: """
                        {"ID": "storage-vault", "Name": "storage", "Namespace": "vault", "Port": \(vault.port), "Address": "127.0.0.1",
                         "Connect": {"SidecarService": {"Port": \(freeLocalPort())}}}
                        """)
                    try mesh.agent.registerService(json: """
                        {"ID": "storage-decoy", "Name": "storage", "Port": \(decoy.port), "Address": "127.0.0.1",
                         "Connect": {"SidecarService": {"Port": \(freeLocalPort())}}}
                        """)
                    try mesh.agent.registerService(json: """
                        {"ID": "backup-agent", "Name": "backup-agent", "Namespace": "agents", "Port": \(freeLocalPort()), "Address": "127.0.0.1",
                         "Connect": {"SidecarService": {"Port": \(freeLocalPort()), "Proxy": {"Upstreams": [
                           {"DestinationName": "storage", "DestinationNamespace": "vault", "LocalBindPort": \(upstreamPort),
                            "Config": {"connect_timeout_ms": 2000}}]}}}}
                        """)
                    // The decoy lets everyone in: a misrouted tunnel would be allowed and then fail to echo.
                    try mesh.agent.writeConfigEntry(json: """
                        {"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "*", "Action": "allow"}]}
                        """)
                    let (vaultProxy, storage) = try await mesh.sidecar(for: "storage-vault", namespace: "vault")
                    try await withTeardown({ await vaultProxy.stop(); await storage.stop() }) {
                        let (decoyProxy, decoySidecar) = try await mesh.sidecar(for: "storage-decoy")
                        try await withTeardown({ await decoyProxy.stop(); await decoySidecar.stop() }) {
                            let (agentProxy, agent) = try await mesh.sidecar(for: "backup-agent", namespace: "agents")
                            try await withTeardown({ await agentProxy.stop(); await agent.stop() }) {

                                #expect(storage.currentCredentials.identity.namespace == "vault")
                                #expect(decoySidecar.currentCredentials.identity.namespace == "default")
                                #expect(agent.currentCredentials.identity.namespace == "agents")
                                #expect(agent.definition.upstreams.map(\.listenerName) == ["upstream:vault/storage"])
                                #expect(await eventually(timeout: 30) {
                                    storage.readiness.ready && agent.upstreamInstanceList["vault/storage"]?.count == 1
                                })
                                #expect(agent.upstreamInstanceList["vault/storage"]?.first?.port == storage.definition.publicBindPort,
                                        "the instance list is vault's, not the decoy's")

                                // The default namespace's allow-all does not apply to vault/storage: denied.
                                #expect(storage.currentIntentions?.intentions.isEmpty == true)
                                #expect(!(await echoRoundTrip(port: upstreamPort)))

                                // An allow in vault whose source names no namespace means vault/backup-agent (Consul
                                // inherits the destination's): still denied for agents/backup-agent.
                                try mesh.agent.writeConfigEntry(json: """
                                    {"Kind": "service-intentions", "Name": "storage", "Namespace": "vault", "Sources": [{"Name": "backup-agent", "Action": "allow"}]}
                                    """)
                                #expect(await eventually(timeout: 30) { storage.currentIntentions?.intentions.count == 1 })
                                #expect(storage.currentIntentions?.intentions.first?.sourceNamespace == "vault")
                                #expect(!(await echoRoundTrip(port: upstreamPort)))

                                try mesh.agent.writeConfigEntry(json: """
                                    {"Kind": "service-intentions", "Name": "storage", "Namespace": "vault",
                                     "Sources": [{"Name": "backup-agent", "Namespace": "agents", "Action": "allow"}]}
                                    """)
                                #expect(await eventually(timeout: 30) { storage.currentIntentions?.intentions.first?.sourceNamespace == "agents" })
                                #expect(await eventuallyEchoes(port: upstreamPort), "agents/backup-agent reaches vault/storage")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test("A CE agent: no ?ns= on any call, and CONSUL_NAMESPACE gets CE's refusal at startup")
    func communityEdition() async throws {
        let mesh = try await ConsulMesh.start()
        try await withTeardown({ await mesh.stop() }) {
            let backend = try await TestBackend(.echo, group: testGroup)
            try await withTeardown({ await backend.stop() }) {
                try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: freeLocalPort())
                let (proxy, sidecar) = try await mesh.sidecar(for: "storage")
                await withTeardown({ await proxy.stop(); await sidecar.stop() }) {
                    #expect(sidecar.definition.tenancy == nil, "CE's answers state no namespace")

                    let log = RecordingLogHandler()
                    await #expect(throws: ConsulProxyError.self) {
                        let (proxy, sidecar) = try await mesh.sidecar(for: "storage", startupTimeout: .seconds(20), namespace: "vault",
                                                                      logger: log.logger)
                        await proxy.stop()
                        await sidecar.stop()
                    }
                    #expect(log.messages.contains { $0.contains("Namespaces are a Consul Enterprise feature") }, "\(log.messages.suffix(3))")
                }
            }
        }
    }
}
