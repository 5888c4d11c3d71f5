@testable import DevAgent
import Foundation
import Testing
@testable import SidecarModel

@Suite("Dev agent: config entries and intentions")
struct IntentionTests {
    static let storageIntentions = """
    {"kind": "service-intentions", "name": "storage",
     "sources": [
       {"name": "backup-agent", "action": "allow", "description": "backups"},
       {"name": "*", "action": "deny"},
       {"name": "web", "permissions": [{"action": "allow", "http": {"path_prefix": "/v1/", "methods": ["get"]}}]}
     ]}
    """
    static let wildcardIntentions = #"{"Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "monitor", "Action": "allow"}]}"#

    @Test func matchOrdersByPrecedenceAndAuthorizeDecides() async throws {
        let agent = try await TestAgent.start()
        #expect(try await agent.put("/v1/config", Self.storageIntentions).text == "true")
        try agent.agent.writeConfigEntry(json: Self.wildcardIntentions)

        let reply = try await agent.get("/v1/connect/intentions/match?by=destination&name=storage&name=other")
        #expect(reply.index != nil)
        let raw = try reply.object()
        let storage = try #require(raw["storage"] as? [[String: Any]])
        #expect(storage.map { $0["SourceName"] as? String } == ["backup-agent", "web", "*", "monitor"])
        #expect(storage.map { $0["Precedence"] as? Int } == [9, 9, 8, 6])
        #expect(storage[0]["Action"] as? String == "allow" && storage[0]["SourceType"] as? String == "consul")
        #expect(storage[1]["Action"] as? String == "")
        let permission = try #require((storage[1]["Permissions"] as? [[String: Any]])?.first)
        #expect((permission["HTTP"] as? [String: Any])?["PathPrefix"] as? String == "/v1/")
        #expect(storage[0]["Permissions"] is NSNull)
        #expect((raw["other"] as? [[String: Any]])?.map { $0["SourceName"] as? String } == ["monitor"])
        // Stable IDs across reads, and the sidecar's decoder accepts the answer.
        let again = try await agent.get("/v1/connect/intentions/match?by=destination&name=storage")
        #expect(((try again.object()["storage"] as? [[String: Any]])?.first?["ID"] as? String) == storage[0]["ID"] as? String)
        let decoded = try ConsulIntentionMatch.decode(reply.body, source: "match", destination: "storage")
        #expect(decoded.count == 4 && decoded[1].hasPermissions)

        let td = agent.agent.trustDomain
        func authorize(_ source: String, trustDomain: String? = nil) async throws -> [String: Any] {
            let uri = "spiffe://\(trustDomain ?? td)/ns/default/dc/dc1/svc/\(source)"
            return try await agent.post("/v1/agent/connect/authorize",
                                        #"{"Target": "storage", "ClientCertURI": "\#(uri)", "ClientCertSerial": "01"}"#).object()
        }
        #expect(try await authorize("backup-agent")["Authorized"] as? Bool == true)
        #expect(try await authorize("intruder")["Authorized"] as? Bool == false)
        #expect(try await authorize("web")["Authorized"] as? Bool == false)  // L7 only
        #expect(try await authorize("backup-agent", trustDomain: "other.consul")["Authorized"] as? Bool == false)
        let unknownTarget = try await agent.post("/v1/agent/connect/authorize",
                                                  #"{"Target": "nothing", "ClientCertURI": "spiffe://\#(td)/ns/default/dc/dc1/svc/x"}"#).object()
        #expect(unknownTarget["Authorized"] as? Bool == false)
        #expect((unknownTarget["Reason"] as? String)?.contains("Default") == true)

        // A blocking match wakes when an entry changes.
        let index = try #require(reply.index)
        let blocked = Task { try await agent.get("/v1/connect/intentions/match?by=destination&name=storage&index=\(index)&wait=10s") }
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await http("DELETE", agent.base + "/v1/config/service-intentions/*").status == 200)
        let woken = try await blocked.value
        #expect(try #require(woken.index) > index)
        #expect((try woken.object()["storage"] as? [[String: Any]])?.count == 3)
    }

    @Test func allowDefaultPolicy() async throws {
        let agent = try await TestAgent.start { $0.defaultIntentionPolicy = "allow" }
        let uri = "spiffe://\(agent.agent.trustDomain)/ns/default/dc/dc1/svc/anyone"
        let answer = try await agent.post("/v1/agent/connect/authorize", #"{"Target": "storage", "ClientCertURI": "\#(uri)"}"#).object()
        #expect(answer["Authorized"] as? Bool == true)
        let current = try ConsulAgentSelf.decode(try await agent.get("/v1/agent/self").body, source: "self")
        #expect(current.defaultIntentionPolicy == .allow && current.datacenter == "dc1")
    }

    @Test func configEntriesCRUD() async throws {
        let agent = try await TestAgent.start()
        #expect(try await agent.put("/v1/config", #"{"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}"#).status == 200)
        #expect(try await agent.put("/v1/config", #"{"kind": "service-defaults", "name": "storage", "protocol": "http"}"#).status == 200)
        #expect(try await agent.put("/v1/config", Self.storageIntentions).status == 200)

        let proxyDefaults = try await agent.get("/v1/config/proxy-defaults/global")
        let body = try proxyDefaults.object()
        #expect(body["Kind"] as? String == "proxy-defaults")
        #expect((body["Config"] as? [String: Any])?["protocol"] as? String == "http")
        #expect(proxyDefaults.index == body["ModifyIndex"] as? UInt64 ?? (body["ModifyIndex"] as? Int).map(UInt64.init))
        let defaults = try await agent.get("/v1/config/service-defaults/storage").object()
        #expect(defaults["Protocol"] as? String == "http")
        let intentions = try await agent.get("/v1/config/service-intentions/storage").object()
        let sources = try #require(intentions["Sources"] as? [[String: Any]])
        #expect(sources.first?["Name"] as? String == "backup-agent" && sources.first?["Action"] as? String == "allow")
        #expect(try await agent.get("/v1/config/service-intentions").array().count == 1)

        // Updating keeps CreateIndex and moves ModifyIndex.
        let created = try #require(intentions["CreateIndex"] as? Int)
        try agent.agent.writeConfigEntry(json: Self.storageIntentions.replacingOccurrences(of: "backups", with: "nightly"))
        let updated = try await agent.get("/v1/config/service-intentions/storage").object()
        #expect(updated["CreateIndex"] as? Int == created && (updated["ModifyIndex"] as? Int ?? 0) > created)

        #expect(try await http("DELETE", agent.base + "/v1/config/service-defaults/storage").status == 200)
        let missing = try await agent.get("/v1/config/service-defaults/storage")
        #expect(missing.status == 404)
        #expect(missing.text == #"Config entry not found for "service-defaults" / "storage""#)
        #expect(try await agent.put("/v1/config", #"{"Kind": "proxy-defaults", "Name": "other"}"#).status == 400)
        #expect(try await agent.put("/v1/config", #"{"Kind": "mesh-gateway", "Name": "x"}"#).status == 400)
        let invalid = try await agent.put("/v1/config", #"{"Kind": "service-intentions", "Name": "s", "Sources": [{"Name": "a", "Action": "maybe"}]}"#)
        #expect(invalid.status == 400 && invalid.text.contains("maybe"))
        #expect(throws: DevAgentError.self) { try agent.agent.writeConfigEntry(json: #"{"Name": "x"}"#) }
    }
}
