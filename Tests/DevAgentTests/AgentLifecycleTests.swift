@testable import DevAgent
import Foundation
import Logging
import Testing
@testable import SidecarModel

@Suite("Dev agent: HTTP rules, ACLs, lifecycle, config directory")
struct AgentLifecycleTests {
    @Test func blockingIndexAndWaitParameters() async throws {
        let agent = try await TestAgent.start()
        #expect(try await agent.get("/v1/catalog/services?index=1&wait=forever").text == "Invalid wait time")
        #expect(try await agent.get("/v1/catalog/services?index=1&wait=5").status == 400)
        #expect(try await agent.get("/v1/health/service/x?index=abc").text == "Invalid index")
        let first = try await agent.get("/v1/catalog/services?pretty")
        let index = try #require(first.index)
        #expect(index >= 1)

        // No change: the call waits (plus at most wait/16) and answers the same index.
        var start = ContinuousClock.now
        let idle = try await agent.get("/v1/catalog/services?index=\(index)&wait=500ms")
        let waited = elapsed(since: start)
        // The upper bound only has to tell "answered at the wait" from Consul's 5-minute
        // default; a loaded 2-core machine stretched 0.5 s to 1.6 s once.
        #expect(waited >= 0.45 && waited < 10, "waited \(waited) s")
        #expect(idle.index == index)

        // index=0 never blocks; a write wakes a blocked call.
        start = ContinuousClock.now
        _ = try await agent.get("/v1/catalog/services?index=0&wait=60s")
        #expect(elapsed(since: start) < 10, "index=0 answers at once, not after the 60 s wait")
        let blocked = Task { try await agent.get("/v1/catalog/services?index=\(index)&wait=60s") }
        try await Task.sleep(for: .milliseconds(200))
        try agent.agent.registerService(json: #"{"Name": "late", "Port": 1, "Tags": ["b", "a"]}"#)
        let woken = try await blocked.value
        #expect(try #require(woken.index) > index)
        #expect(try woken.object()["late"] as? [String] == ["a", "b"])
    }

    @Test func unknownPathsAndMethods() async throws {
        let agent = try await TestAgent.start()
        #expect(try await agent.get("/v1/nothing/here").status == 404)
        #expect(try await agent.get("/elsewhere").status == 404)
        #expect(try await agent.get("/v1/agent/service/register").status == 405)  // the register route, not an ID
        #expect(try await agent.post("/v1/agent/services", "").status == 405)
        #expect(try await http("DELETE", agent.base + "/v1/agent/connect/ca/roots").status == 405)
        let current = try await agent.get("/v1/agent/self").object()
        #expect((current["Config"] as? [String: Any])?["Version"] as? String == "1.20.0-dev-agent")
    }

    @Test func aclEnforcementAndLogin() async throws {
        let issuer = try DevJWTIssuer(.es256)
        let agent = try await TestAgent.start {
            $0.aclToken = "root-token"
            $0.authMethods = [DevAgentAuthMethod(name: "jwt", jwtValidationPubKeys: [issuer.publicKeyPEM])]
        }
        // No token is the anonymous token (default deny): lists are filtered, reads refused.
        let anonymous = try await agent.get("/v1/agent/services")
        #expect(anonymous.status == 200 && anonymous.text == "{}")
        let denied = try await agent.get("/v1/agent/self")
        #expect(denied.status == 403 && denied.text.hasPrefix("Permission denied: anonymous token lacks permission 'agent:read' on \"dev-node\""))
        let unknown = try await agent.get("/v1/agent/services", headers: ["X-Consul-Token": "wrong"])
        #expect(unknown.status == 403 && unknown.text == "ACL not found")
        #expect(try await agent.get("/v1/agent/services", headers: ["X-Consul-Token": "root-token"]).status == 200)
        #expect(try await agent.get("/v1/agent/services?token=root-token").status == 200)
        #expect(try await agent.get("/v1/agent/services", headers: ["Authorization": "Bearer root-token"]).status == 200)

        let badLogin = try await agent.post("/v1/acl/login", #"{"AuthMethod": "jwt", "BearerToken": "nope"}"#)
        #expect(badLogin.status == 403 && badLogin.text.hasPrefix("Permission denied"))
        let jwt = try issuer.sign(DevJWTIssuer.claims(subject: "backup-agent", audience: "a", issuer: "i"))
        let login = try await agent.post("/v1/acl/login", #"{"AuthMethod": "jwt", "BearerToken": "\#(jwt)", "Meta": {}}"#).object()
        let secret = try #require(login["SecretID"] as? String)
        #expect((login["ServiceIdentities"] as? [[String: Any]])?.first?["ServiceName"] as? String == "backup-agent")
        #expect(try await agent.get("/v1/agent/connect/ca/roots", headers: ["X-Consul-Token": secret]).status == 200)
        #expect(try await agent.post("/v1/acl/logout", "", headers: ["X-Consul-Token": secret]).status == 200)
        #expect(try await agent.get("/v1/agent/connect/ca/roots", headers: ["X-Consul-Token": secret]).status == 403)
    }

    @Test func stopThenStartKeepsStateAndPort() async throws {
        let agent = try await TestAgent.start { $0.leafTTL = 3600 }
        try agent.agent.registerService(json: #"{"Name": "kept", "Port": 7}"#)
        let leaf = try ConsulLeafCertificate.decode(try await agent.get("/v1/agent/connect/ca/leaf/kept").body, source: "leaf")
        let index = try #require(try await agent.get("/v1/catalog/services").index)
        let pending = Task { try? await agent.get("/v1/catalog/services?index=\(index)&wait=30s") }
        try await Task.sleep(for: .milliseconds(200))

        let start = ContinuousClock.now
        await agent.agent.stop()
        #expect(await pending.value == nil)  // the pending blocking query was dropped
        #expect(elapsed(since: start) < 10, "dropped at stop, not after its 30 s wait")
        await #expect(throws: CurlError.self) { _ = try await agent.get("/v1/agent/services") }

        let port = try await agent.agent.start()
        #expect(agent.base == "http://127.0.0.1:\(port)")
        #expect(agent.agent.httpAddress == "127.0.0.1:\(port)")
        #expect(try await agent.get("/v1/agent/service/kept").status == 200)
        let again = try ConsulLeafCertificate.decode(try await agent.get("/v1/agent/connect/ca/leaf/kept").body, source: "leaf")
        #expect(again.serialNumber == leaf.serialNumber)
        #expect(try #require(try await agent.get("/v1/catalog/services").index) == index)
        await agent.agent.stop()
    }

    @Test func loadsTheRepositoryDeployDirectory() async throws {
        let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/consul").path
        let agent = try await TestAgent.start { $0.configDirectory = deploy }
        let services = try await agent.get("/v1/agent/services").object()
        #expect(Set(services.keys) == ["backup-agent", "backup-agent-sidecar-proxy", "storage", "storage-sidecar-proxy"])
        let sidecar = try ConsulAgentService.decode(try await agent.get("/v1/agent/service/backup-agent-sidecar-proxy").body, source: "svc")
        #expect(sidecar.proxy.port == 21000)
        #expect(sidecar.proxy.upstreams.first?.destinationName == "storage")
        #expect(sidecar.proxy.upstreams.first?.localBindPort == 19100)
        let storage = try await agent.get("/v1/agent/service/storage-sidecar-proxy").object()
        #expect(storage["Port"] as? Int == 21001)
        #expect(((storage["Proxy"] as? [String: Any])?["Config"] as? [String: Any])?["protocol"] as? String == "http")
        #expect(try await agent.get("/v1/config/proxy-defaults/global").status == 200)
        #expect(try await agent.get("/v1/config/service-defaults/storage").status == 200)
        let connect = try ConsulServiceInstance.decode(try await agent.get("/v1/health/connect/storage?passing=1").body, source: "h")
        #expect(connect.map(\.service.id) == ["storage-sidecar-proxy"])
    }

    @Test func badConfigDirectoryFileNamesTheFile() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try #"{"service": {"port": 1}}"#.write(to: directory.appendingPathComponent("broken.json"), atomically: true, encoding: .utf8)
        try #"[{"Kind": "service-intentions", "Name": "a", "Sources": [{"Name": "b", "Action": "allow"}]}]"#
            .write(to: directory.appendingPathComponent("intentions.json"), atomically: true, encoding: .utf8)
        var configuration = DevAgentConfiguration(logger: Logger(label: "test"))
        configuration.configDirectory = directory.path
        do {
            _ = try DevAgent(configuration: configuration)
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("broken.json") && "\(error)".contains("Missing service name"))
        }
        try FileManager.default.removeItem(at: directory.appendingPathComponent("broken.json"))
        _ = try DevAgent(configuration: configuration)
    }
}
