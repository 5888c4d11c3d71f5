import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarModel

/// The files in deploy/ load as they are.
@Suite("deploy/ files")
struct DeployFilesTests {
    static func path(_ name: String) -> String { TestCertificates.repositoryRoot.appendingPathComponent("deploy/\(name)").path }

    @Test("Service definitions load as sidecar definitions, as Consul derives them")
    func serviceDefinitions() throws {
        let agent = try ProxyDefinition.load(path: Self.path("consul/backup-agent.json"))
        #expect(agent.name == "backup-agent-sidecar-proxy")
        #expect(agent.destinationServiceName == "backup-agent")
        #expect(agent.localServicePort == 9100)
        #expect(agent.port == 21000)
        #expect(agent.upstreams.map(\.destinationName) == ["storage"])
        #expect(agent.upstreams.first?.localBindPort == 19100)
        #expect(agent.upstreams.first?.connectTimeoutMs == 5000)

        let storage = try ProxyDefinition.load(path: Self.path("consul/storage.json"))
        #expect(storage.name == "storage-sidecar-proxy")
        #expect(storage.localServicePort == 8080)
        #expect(storage.config.protocol == "http")
        #expect(storage.config.maxConnectionLifetimeNs == Int64(24 * 3600) * 1_000_000_000)
        #expect(storage.config.maxConnections == 4096)
    }

    @Test("Intentions files load; config entries are well-formed JSON with their Kind")
    func intentionsAndEntries() throws {
        let l4 = try IntentionsFile.load(path: Self.path("intentions.json"))
        #expect(l4.count == 3)
        let l7 = try IntentionsFile.load(path: Self.path("intentions-l7.json"))
        #expect(l7.first { $0.sourceName == "backup-agent" }?.permissions.count == 3)
        let restic = try IntentionsFile.load(path: Self.path("intentions-restic.json"))
        #expect(restic.first { $0.sourceName == "backup-agent" }?.permissions.count == 4)
        for (file, kind) in [("consul/proxy-defaults.json", "proxy-defaults"), ("consul/service-defaults-storage.json", "service-defaults")] {
            let value = try JSONValue.parse(FileManager.default.contents(atPath: Self.path(file))!, source: file)
            #expect(try ConfigNode(value: value, path: "", source: file).require("kind").string() == kind)
        }
    }
}

@Suite("Upstream bind addresses")
struct UpstreamBindTests {
    static func upstream(_ address: String) -> Upstream {
        Upstream(destinationName: "storage", tenancy: .default, datacenter: nil,
                 localBindAddress: address, localBindPort: 19100, connectTimeoutMs: 1000)
    }

    @Test("Loopback only by default", arguments: [
        ("127.0.0.1", true), ("127.1.2.3", true), ("localhost", true), ("LOCALHOST", true), ("::1", true), ("[::1]", true),
        ("0.0.0.0", false), ("10.0.0.5", false), ("::", false), ("127.0.0", false), ("127.0.0.256", false), ("1.2.3.127", false),
        ("backup-host", false), ("", false),
    ])
    func loopback(_ address: String, _ loopback: Bool) {
        #expect(Self.upstream(address).bindsLoopbackOnly == loopback)
    }

    @Test("A non-loopback upstream is refused unless explicitly allowed")
    func refusal() throws {
        var definition = try ProxyDefinition.load(path: DeployFilesTests.path("consul/backup-agent.json"))
        try definition.validateUpstreamBinds(allowNonLoopback: false)
        definition.upstreams[0].localBindAddress = "0.0.0.0"
        #expect(throws: ConfigError.self) { try definition.validateUpstreamBinds(allowNonLoopback: false) }
        try definition.validateUpstreamBinds(allowNonLoopback: true)
    }
}
