@testable import DevAgent
import Foundation
import Testing
import TestSupport
@testable import SidecarModel

@Suite("Dev agent: services, checks and health")
struct ServiceTests {
    static let snakeProxy = """
    {"name": "web-proxy", "id": "web-proxy-1", "kind": "connect-proxy", "port": 21500, "address": "10.0.0.5",
     "proxy": {"destination_service_name": "web", "local_service_port": 8080, "local_service_address": "127.0.0.1",
               "config": {"handshake_timeout_ms": 5000},
               "upstreams": [{"destination_name": "storage", "local_bind_port": 19100}]}}
    """

    @Test func registerSnakeCaseAndReadWithContentHash() async throws {
        let agent = try await TestAgent.start()
        let registered = try await agent.put("/v1/agent/service/register", Self.snakeProxy)
        #expect(registered.status == 200, "\(registered.text)")
        let reply = try await agent.get("/v1/agent/service/web-proxy-1")
        #expect(reply.status == 200)
        #expect(reply.headers["content-type"] == "application/json")
        let body = try reply.object()
        #expect(body["Kind"] as? String == "connect-proxy")
        #expect(body["ContentHash"] as? String == reply.headers["x-consul-contenthash"])
        let proxy = try #require(body["Proxy"] as? [String: Any])
        #expect(proxy["DestinationServiceName"] as? String == "web")
        #expect(proxy["LocalServicePort"] as? Int == 8080)
        #expect(proxy["LocalServiceSocketPath"] == nil)
        let upstream = try #require((proxy["Upstreams"] as? [[String: Any]])?.first)
        #expect(upstream["DestinationType"] as? String == "service")
        #expect(upstream["LocalBindAddress"] == nil, "omitempty: not registered, not sent (the proxy picks 127.0.0.1)")
        // Consul CE: no tenancy anywhere (omitempty), so a proxy knows not to send ?ns=.
        #expect(upstream["DestinationNamespace"] == nil && body["Namespace"] == nil && body["Partition"] == nil)
        // The sidecar's own decoder reads it.
        let decoded = try ConsulAgentService.decode(reply.body, source: "test")
        #expect(decoded.proxy.upstreams.first?.localBindPort == 19100)
        #expect(decoded.proxy.address == "10.0.0.5")

        let pascal = """
        {"Name": "api", "ID": "api-1", "Port": 9000, "Tags": ["v1"], "Meta": {"team": "backup"}}
        """
        #expect(try await agent.put("/v1/agent/service/register", pascal).status == 200)
        let plain = try await agent.get("/v1/agent/service/api-1").object()
        #expect(plain["Kind"] == nil)
        #expect(plain["Tags"] as? [String] == ["v1"])
        #expect((plain["Meta"] as? [String: String])?["team"] == "backup")
        let services = try await agent.get("/v1/agent/services").object()
        #expect(Set(services.keys) == ["web-proxy-1", "api-1"])

        let missing = try await agent.get("/v1/agent/service/nope")
        #expect(missing.status == 404)
        #expect(missing.text == "unknown service ID: nope")
        #expect(try await agent.put("/v1/agent/service/register", "{not json").status == 400)
        #expect(try await agent.put("/v1/agent/service/register", #"{"Port": 1}"#).status == 400)
    }

    @Test func hashBlockingWakesOnReregister() async throws {
        let agent = try await TestAgent.start()
        try agent.agent.registerService(json: Self.snakeProxy)
        let first = try await agent.get("/v1/agent/service/web-proxy-1")
        let hash = try #require(first.headers["x-consul-contenthash"])

        // Nothing changes: the call waits out `wait` and answers the same hash.
        let start = ContinuousClock.now
        let idle = try await agent.get("/v1/agent/service/web-proxy-1?hash=\(hash)&wait=400ms")
        #expect(elapsed(since: start) >= 0.35)
        #expect(idle.headers["x-consul-contenthash"] == hash)

        let blocked = Task { try await agent.get("/v1/agent/service/web-proxy-1?hash=\(hash)&wait=60s") }
        try await Task.sleep(for: .milliseconds(300))
        let changed = Self.snakeProxy.replacingOccurrences(of: "19100", with: "19200")
        let wakeStart = ContinuousClock.now
        try agent.agent.registerService(json: changed)
        let woken = try await blocked.value
        #expect(elapsed(since: wakeStart) < 10, "woken by the change, not by the 60 s wait")
        #expect(woken.headers["x-consul-contenthash"] != hash)
        let upstreams = try #require((try woken.object()["Proxy"] as? [String: Any])?["Upstreams"] as? [[String: Any]])
        #expect(upstreams.first?["LocalBindPort"] as? Int == 19200)

        // A changed LocalServicePort changes the hash too.
        try agent.agent.registerService(json: changed.replacingOccurrences(of: "8080", with: "8081"))
        let third = try await agent.get("/v1/agent/service/web-proxy-1")
        #expect(third.headers["x-consul-contenthash"] != woken.headers["x-consul-contenthash"])
    }

    @Test func sidecarServiceDefaultsAndDeregister() async throws {
        let agent = try await TestAgent.start()
        let parent = """
        {"name": "backup-agent", "port": 9100, "address": "10.1.1.1",
         "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_name": "storage", "local_bind_port": 19100}]}}}}
        """
        try agent.agent.registerService(json: parent)
        try agent.agent.registerService(json: #"{"Name": "db", "Port": 5432, "Connect": {"SidecarService": {}}}"#)
        let sidecar = try await agent.get("/v1/agent/service/backup-agent-sidecar-proxy").object()
        #expect(sidecar["Service"] as? String == "backup-agent-sidecar-proxy")
        #expect(sidecar["Kind"] as? String == "connect-proxy")
        #expect(sidecar["Port"] as? Int == 21000)
        #expect(sidecar["Address"] as? String == "10.1.1.1")
        let proxy = try #require(sidecar["Proxy"] as? [String: Any])
        #expect(proxy["DestinationServiceName"] as? String == "backup-agent")
        #expect(proxy["DestinationServiceID"] as? String == "backup-agent")
        #expect(proxy["LocalServiceAddress"] as? String == "127.0.0.1")
        #expect(proxy["LocalServicePort"] as? Int == 9100)
        let upstream = try #require((proxy["Upstreams"] as? [[String: Any]])?.first)
        #expect(upstream["LocalBindAddress"] == nil)
        #expect(upstream["DestinationPartition"] == nil)
        let dbSidecar = try await agent.get("/v1/agent/service/db-sidecar-proxy").object()
        #expect(dbSidecar["Port"] as? Int == 21001)

        // Re-registering keeps the sidecar's port.
        try agent.agent.registerService(json: parent)
        #expect(try await agent.get("/v1/agent/service/backup-agent-sidecar-proxy").object()["Port"] as? Int == 21000)

        #expect(try await agent.put("/v1/agent/service/deregister/backup-agent").status == 200)
        #expect(try await agent.get("/v1/agent/service/backup-agent-sidecar-proxy").status == 404)
        #expect(try await agent.get("/v1/agent/service/backup-agent").status == 404)
        #expect(try await agent.put("/v1/agent/service/deregister/backup-agent").status == 404)
        let catalog = try await agent.get("/v1/catalog/services").object()
        #expect(Set(catalog.keys) == ["db", "db-sidecar-proxy"])
    }

    @Test func healthConnectPassingFilterFollowsChecks() async throws {
        let agent = try await TestAgent.start()
        try agent.agent.registerService(json: """
        {"name": "storage", "port": 8080, "check": {"ttl": "30s"},
         "connect": {"sidecar_service": {}}}
        """)
        // TTL checks start critical; the sidecar's alias check follows its parent.
        let checks = try await agent.get("/v1/agent/checks").object()
        #expect((checks["service:storage"] as? [String: Any])?["Status"] as? String == "critical")
        let all = try await agent.get("/v1/health/connect/storage")
        #expect(try all.array().count == 1)
        let firstIndex = try #require(all.index)
        #expect(try await agent.get("/v1/health/connect/storage?passing=1").array().isEmpty)

        let blocked = Task { try await agent.get("/v1/health/connect/storage?passing=1&index=\(firstIndex)&wait=10s") }
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await agent.put("/v1/agent/check/pass/service:storage").status == 200)
        let woken = try await blocked.value
        #expect(try #require(woken.index) > firstIndex)
        let instances = try ConsulServiceInstance.decode(woken.body, source: "test")
        #expect(instances.count == 1)
        #expect(instances.first?.service.id == "storage-sidecar-proxy")
        #expect(instances.first?.service.proxyDestinationName == "storage")
        #expect(instances.first?.service.port == 21000)
        #expect(instances.first?.node.datacenter == "dc1")
        #expect(instances.first?.isPassing == true)

        let service = try await agent.get("/v1/health/service/storage?passing")
        #expect(try service.array().count == 1)
        try agent.agent.setCheck("service:storage", status: "warning")
        #expect(try await agent.get("/v1/health/service/storage?passing=1").array().isEmpty)
        #expect(try await agent.put("/v1/agent/check/fail/nope").status == 404)
    }

    @Test func ttlCheckExpiresToCritical() async throws {
        let agent = try await TestAgent.start()
        try agent.agent.registerService(json: #"{"Name": "app", "Port": 1, "Checks": [{"TTL": "5s", "Status": "passing"}, {"CheckID": "extra", "TTL": "1h"}]}"#)
        let checks = try await agent.get("/v1/agent/checks").object()
        #expect(Set(checks.keys) == ["service:app:1", "extra"])
        #expect(try await agent.put("/v1/agent/check/pass/service:app:1").status == 200)
        let before = try await agent.get("/v1/health/service/app").array()
        #expect(((before.first?["Checks"] as? [[String: Any]])?.first { $0["CheckID"] as? String == "service:app:1" })?["Status"] as? String == "passing")
        // Expires 5 s after the pass (long enough for the reads above on a loaded machine);
        // awaited, since a busy machine may also run the check late.
        #expect(await eventually {
            ((try? await agent.get("/v1/agent/checks").object())?["service:app:1"] as? [String: Any])?["Status"] as? String == "critical"
        })
        let after = try await agent.get("/v1/agent/checks").object()
        let expired = try #require(after["service:app:1"] as? [String: Any])
        #expect(expired["Status"] as? String == "critical")
        #expect(expired["Output"] as? String == "TTL expired")
    }
}
