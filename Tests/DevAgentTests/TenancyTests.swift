@testable import DevAgent
import Foundation
import Testing

/// Consul CE refuses every namespace or partition (with these words); the Enterprise mode
/// scopes each endpoint the sidecar reads by `?ns=` / `?partition=`.
@Suite("Dev agent: namespaces and partitions")
struct TenancyTests {
    @Test("CE: ?ns=, ?partition=, their headers and a Namespace field are 400 with Consul CE's words")
    func communityEditionRefuses() async throws {
        let agent = try await TestAgent.start()
        let cases: [(String, [String: String], String)] = [
            ("/v1/agent/services?ns=default", [:], #"Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature"#),
            ("/v1/health/connect/web?passing=1&ns=team-a", [:], #"Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature"#),
            ("/v1/agent/connect/ca/leaf/web?partition=p1", [:], #"Invalid query parameter: "partition" - Partitions are a Consul Enterprise feature"#),
            ("/v1/connect/intentions/match?by=destination&name=web", ["X-Consul-Namespace": "x"],
             #"Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature"#),
            ("/v1/agent/services", ["X-Consul-Partition": "p"], #"Invalid header: "X-Consul-Partition" - Partitions are a Consul Enterprise feature"#),
        ]
        for (path, headers, message) in cases {
            let reply = try await agent.get(path, headers: headers)
            #expect(reply.status == 400 && reply.text == message, "\(path): \(reply.status) \(reply.text)")
        }
        #expect(try await agent.get("/v1/agent/services?ns=").status == 200, "an empty ns is no ns")
        let registered = try await agent.put("/v1/agent/service/register", #"{"Name": "web", "Port": 80, "Namespace": "team-a"}"#)
        #expect(registered.status == 400 && registered.text.hasSuffix("Namespaces are a Consul Enterprise feature"), "\(registered.text)")
        let entry = try await agent.put("/v1/config", #"{"Kind": "service-intentions", "Name": "web", "Namespace": "team-a", "Sources": []}"#)
        #expect(entry.status == 400, "\(entry.text)")
    }

    @Test("Enterprise: services, leaves, health and intentions are per namespace and partition")
    func enterpriseScopes() async throws {
        let agent = try await TestAgent.start { $0.enterprise = true }
        // The namespace from the query; the sidecar and its upstream inherit it.
        let registered = try await agent.put("/v1/agent/service/register?ns=vault", """
            {"Name": "storage", "Port": 8080, "Connect": {"SidecarService": {"Port": 21000,
             "Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 9000},
                                     {"DestinationName": "db", "DestinationNamespace": "ops", "LocalBindPort": 9001}]}}}}
            """)
        #expect(registered.status == 200, "\(registered.text)")
        #expect(try await agent.put("/v1/agent/service/register", #"{"Name": "other", "Port": 81, "Partition": "p1"}"#).status == 200)

        #expect(try await agent.get("/v1/agent/service/storage-sidecar-proxy").status == 404, "not in the default namespace")
        let sidecar = try await agent.get("/v1/agent/service/storage-sidecar-proxy?ns=vault").object()
        #expect(sidecar["Namespace"] as? String == "vault" && sidecar["Partition"] as? String == "default")
        let upstreams = try #require((sidecar["Proxy"] as? [String: Any])?["Upstreams"] as? [[String: Any]])
        #expect(upstreams.map { $0["DestinationNamespace"] as? String } == ["vault", "ops"])
        #expect(upstreams.map { $0["DestinationPartition"] as? String } == ["default", "default"])

        #expect(try await agent.get("/v1/agent/services").object().isEmpty)
        #expect(Set(try await agent.get("/v1/agent/services?ns=vault").object().keys) == ["storage", "storage-sidecar-proxy"])
        #expect(Set(try await agent.get("/v1/agent/services?partition=p1").object().keys) == ["other"])

        #expect(try await agent.get("/v1/health/connect/storage?passing=1").array().isEmpty)
        let health = try await agent.get("/v1/health/connect/storage?passing=1&ns=vault").array()
        #expect(health.count == 1)
        let service = try #require(health.first?["Service"] as? [String: Any])
        #expect(service["Namespace"] as? String == "vault")
        let checks = try #require(health.first?["Checks"] as? [[String: Any]])
        #expect(!checks.isEmpty && checks.allSatisfy { $0["Namespace"] as? String == "vault" })

        let leaf = try await agent.get("/v1/agent/connect/ca/leaf/storage?ns=vault").object()
        #expect((leaf["ServiceURI"] as? String)?.hasSuffix("/ns/vault/dc/dc1/svc/storage") == true, "\(leaf["ServiceURI"] ?? "")")
        #expect(leaf["Namespace"] as? String == "vault")
        let partitioned = try await agent.get("/v1/agent/connect/ca/leaf/other?partition=p1").object()
        #expect((partitioned["ServiceURI"] as? String)?.contains("/ap/p1/ns/default/dc/dc1/svc/other") == true)
        let defaultLeaf = try await agent.get("/v1/agent/connect/ca/leaf/storage").object()
        #expect(defaultLeaf["SerialNumber"] as? String != leaf["SerialNumber"] as? String, "one leaf per namespace")
        #expect(try await agent.get("/v1/agent/services?ns=*").status == 400)

        // Intentions: the entry's namespace is where it applies; a source without one inherits it.
        #expect(try await agent.put("/v1/config?ns=vault", #"{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Action": "allow"}]}"#).status == 200)
        #expect(try await agent.put("/v1/config", #"{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "*", "Action": "deny"}]}"#).status == 200)
        let match = try await agent.get("/v1/connect/intentions/match?by=destination&name=storage&ns=vault").object()
        let intentions = try #require(match["storage"] as? [[String: Any]])
        #expect(intentions.count == 1)
        #expect(intentions.first?["SourceNS"] as? String == "vault" && intentions.first?["DestinationNS"] as? String == "vault")
        let defaultMatch = try await agent.get("/v1/connect/intentions/match?by=destination&name=storage").object()
        #expect((defaultMatch["storage"] as? [[String: Any]])?.first?["SourceName"] as? String == "*")
        let entry = try await agent.get("/v1/config/service-intentions/storage?ns=vault").object()
        #expect(entry["Namespace"] as? String == "vault")
    }
}
