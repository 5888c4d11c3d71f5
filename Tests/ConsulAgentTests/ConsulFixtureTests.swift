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

/// Issue 17: recorded answers from Consul's own API docs (Tests/Fixtures/consul, one file per
/// endpoint the sidecar reads, each naming its source and Consul version). Our client must
/// decode each, and the dev agent's answer must have the same fields with the same JSON types.
/// Where the two differ on purpose, the difference is listed here with the reason.
@Suite("Consul API fixtures from Consul's docs")
struct ConsulFixtureTests {
    struct Fixture {
        let response: Any
        let request: Any?
        var responseData: Data { try! JSONSerialization.data(withJSONObject: response, options: [.fragmentsAllowed]) }

        init(_ name: String) throws {
            let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Fixtures/consul/\(name).json")
            let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
            #expect(document["consul_version"] is String && (document["source"] as? String)?.hasPrefix("hashicorp/consul ") == true)
            response = try #require(document["response"])
            request = document["request"]
        }
    }

    // MARK: - The client decodes each

    @Test("agent/service: the docs' sidecar registration decodes; its Namespace makes it Enterprise-shaped")
    func agentService() throws {
        let service = try ConsulAgentService.decode(try Fixture("agent-service").responseData, source: "fixture")
        #expect(service.id == "web-sidecar-proxy" && service.contentHash == "4ecd29c7bc647ca8" && service.datacenter == "dc1")
        #expect(service.proxy.destinationServiceName == "web" && service.proxy.localServicePort == 8080)
        #expect(service.proxy.tenancy == .default)
        #expect(service.proxy.upstreams.map(\.listenerKey) == ["127.0.0.1:9191"])
        #expect(service.proxy.tenancy != nil, "its upstreams' health queries name the tenancy")
    }

    @Test("agent/services: -sidecar-for reads the docs' list (no proxy in it)")
    func agentServices() throws {
        let data = try Fixture("agent-services").responseData
        #expect(try ConsulProxy.sidecarProxyIDs(in: data, for: "redis").isEmpty)
    }

    @Test("agent/self: datacenter and the unset DefaultIntentionPolicy")
    func agentSelf() throws {
        let agent = try ConsulAgentSelf.decode(try Fixture("agent-self").responseData, source: "fixture")
        #expect(agent.datacenter == "dc1")
        #expect(agent.defaultIntentionPolicy == nil, "\"\" means the ACL default policy decides")
    }

    @Test("leaf and roots: the docs' real certificates decode, chain and name their identity")
    func leafAndRoots() throws {
        let leaf = try ConsulLeafCertificate.decode(try Fixture("agent-connect-ca-leaf").responseData, source: "fixture")
        #expect(leaf.service == "web" && leaf.serialNumber == "08")
        #expect(try SPIFFEID.parse(leaf.serviceURI).service == "web")
        let roots = try ConsulCARoots.decode(try Fixture("agent-connect-ca-roots").responseData, source: "fixture")
        #expect(roots.roots.count == 1 && roots.roots[0].serialNumber == 7 && roots.roots[0].active)
        #expect(roots.trustDomain.isEmpty, "old answers have no TrustDomain: the root certificate's SAN says it")
        // The docs' pair was issued in May 2018 (and the root's trust domain differs from the
        // leaf's, so they are not one set): each loads, expired material is refused.
        #expect(throws: TLSMaterialError.self) { try ConsulProxy.credentials(leaf: leaf, roots: roots) }
    }

    @Test("intentions/match: the docs' answer decodes in order")
    func intentionMatch() throws {
        let intentions = try ConsulIntentionMatch.decode(try Fixture("connect-intentions-match").responseData,
                                                         source: "fixture", destination: "web")
        #expect(intentions.map(\.destinationName) == ["db", "*"])
        #expect(intentions.map(\.action) == [.deny, .allow])
    }

    @Test("health/connect: the docs' entry decodes; its lowercase TaggedAddresses keys are read as Go reads them")
    func health() throws {
        let answer = try ConsulServiceInstance.decodeUsable(try Fixture("health-connect").responseData, source: "fixture")
        #expect(answer.skipped.isEmpty)
        let instance = try #require(answer.instances.first)
        #expect(instance.bestAddress(wan: false) == ("10.1.10.12", 8000))
        #expect(instance.bestAddress(wan: true) == ("198.18.1.2", 80))
        #expect(instance.isPassing)
    }

    @Test("acl/login: the docs' answer gives the SecretID")
    func login() throws {
        let answer = try ACLLogin.decodeAnswer(try Fixture("acl-login").responseData)
        #expect(answer.secretID == "b78d37c7-0ca7-5f4d-99ee-6d9975ce4586" && answer.accessorID == "926e2bd2-b344-d91b-0c83-ae89f372cd9b")
        #expect(answer.expiry == nil)
    }

    // MARK: - The dev agent answers with the same fields

    /// Keys in the docs' sample that the dev agent leaves out, or sends although the sample has
    /// none, each with why. Paths: `a.b`, `[]` for array elements, `*` for a map's values.
    struct Differences {
        var notFromDevAgent: [String: String] = [:]
        var alsoFromConsul: [String: String] = [:]
        /// Maps whose keys are data (Meta, Config, tags): their values are not compared.
        var opaque: Set<String> = []
    }

    @Test("Each dev agent answer matches its fixture field for field (Enterprise shape, then CE without tenancy)",
          arguments: [true, false])
    func devAgentMatches(enterprise: Bool) async throws {
        let issuer = try DevJWTIssuer(.es256)
        var method = DevAgentAuthMethod(name: "minikube", jwtValidationPubKeys: [issuer.publicKeyPEM])
        method.boundAudiences = ["consul"]
        let mesh = try await ConsulMesh.start(aclToken: "root", authMethods: [method], enterprise: enterprise)
        try await withTeardown({ await mesh.stop() }) {
            try mesh.agent.registerService(json: """
                {"ID": "web", "Name": "web", "Port": 8080, "Tags": ["primary"], "Meta": {"redis_version": "4.0"},
                 "Weights": {"Passing": 10, "Warning": 1},
                 "Connect": {"SidecarService": {"Port": 18080, "Proxy": {"Mode": "transparent", "Config": {"foo": "bar"},
                   "Upstreams": [{"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191}]}}}}
                """)
            try mesh.agent.writeConfigEntry(json: #"{"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "deny"}]}"#)
            try mesh.agent.writeConfigEntry(json: #"{"Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "web", "Action": "allow"}]}"#)
            let client = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: mesh.port), token: "root"),
                                          eventLoopGroup: testGroup)
            try await withTeardown({ await client.shutdown() }) {
                let tenancyFields: Set<String> = ["Namespace", "Partition", "DestinationNamespace", "DestinationPartition"]

                func check(_ name: String, _ answer: Data, pick: (Any) -> Any? = { $0 }, fixturePick: (Any) -> Any? = { $0 },
                           _ differences: Differences) throws {
                    let fixture = try #require(fixturePick(try Fixture(name).response), "\(name)")
                    let ours = try #require(pick(try JSONSerialization.jsonObject(with: answer, options: [.fragmentsAllowed])), "\(name)")
                    var report = ShapeReport()
                    report.compare(fixture, ours, path: "", opaque: differences.opaque)
                    var missing = Set(report.missing), extra = Set(report.extra)
                    if !enterprise {
                        // Consul CE states no tenancy anywhere; the sample is from Enterprise docs.
                        #expect(extra.filter { tenancyFields.contains($0.split(separator: ".").last.map(String.init) ?? $0) }.isEmpty,
                                "\(name): CE sends no tenancy")
                        missing = missing.filter { !tenancyFields.contains($0.split(separator: ".").last.map(String.init) ?? $0) }
                    }
                    let unexpectedMissing = missing.subtracting(differences.notFromDevAgent.keys)
                    let unexpectedExtra = extra.subtracting(differences.alsoFromConsul.keys)
                    #expect(unexpectedMissing.isEmpty, "\(name): the dev agent lacks \(unexpectedMissing.sorted())")
                    #expect(unexpectedExtra.isEmpty, "\(name): the dev agent adds \(unexpectedExtra.sorted())")
                    #expect(report.typeMismatches.isEmpty, "\(name): types differ at \(report.typeMismatches)")
                    // Listed differences that no longer occur are stale: the list must stay honest.
                    let staleMissing = Set(differences.notFromDevAgent.keys).subtracting(report.missing)
                    let staleExtra = Set(differences.alsoFromConsul.keys).subtracting(report.extra)
                    #expect(staleMissing.isEmpty && staleExtra.isEmpty, "\(name): stale differences \(staleMissing.sorted()) \(staleExtra.sorted())")
                }

                let service = try await client.get("/v1/agent/service/web-sidecar-proxy")
                try check("agent-service", service.body, Differences(
                    notFromDevAgent: [
                        "Proxy.TransparentProxy": "the dev agent keeps no transparent-proxy settings (the sidecar never reads them)",
                    ],
                    alsoFromConsul: [
                        "Partition": "Enterprise 1.11+ names the partition; the sample predates partitions",
                        "Proxy.MeshGateway": "a struct in Consul's api.AgentServiceConnectProxyConfig: always sent, as {}",
                        "Proxy.Expose": "a struct in Consul's api.AgentServiceConnectProxyConfig: always sent, as {}",
                        "Proxy.Upstreams[].MeshGateway": "a struct in Consul's api.Upstream: always sent, as {}",
                        "Proxy.Upstreams[].DestinationNamespace": "Enterprise fills in the proxy's namespace (agent/structs NodeService)",
                        "Proxy.Upstreams[].DestinationPartition": "Enterprise fills in the proxy's partition",
                    ].filter { enterprise || !$0.key.hasSuffix("Partition") && !$0.key.hasSuffix("Namespace") },
                    opaque: ["Meta", "Tags", "TaggedAddresses", "Proxy.Config"]))

                let services = try await client.get("/v1/agent/services")
                try check("agent-services", services.body, pick: { ($0 as? [String: Any])?["web"] },
                          fixturePick: { ($0 as? [String: Any])?["redis"] }, Differences(
                    alsoFromConsul: ["Partition": "Enterprise 1.11+ names the partition; the sample predates partitions"]
                        .filter { _ in enterprise },
                    opaque: ["Meta", "Tags", "TaggedAddresses"]))

                let leaf = try await client.get("/v1/agent/connect/ca/leaf/web")
                try check("agent-connect-ca-leaf", leaf.body, Differences(
                    alsoFromConsul: ["Partition": "Enterprise 1.11+ names the partition; the sample predates partitions"]
                        .filter { _ in enterprise }))

                let roots = try await client.get("/v1/agent/connect/ca/roots")
                try check("agent-connect-ca-roots", roots.body, Differences(
                    alsoFromConsul: ["TrustDomain": "structs.IndexedCARoots has it since 1.2; the sample is older"]))

                let match = try await client.get("/v1/connect/intentions/match", query: [("by", "destination"), ("name", "db")])
                try check("connect-intentions-match", match.body, pick: { ($0 as? [String: Any])?["db"] },
                          fixturePick: { ($0 as? [String: Any])?["web"] }, Differences(
                    alsoFromConsul: [
                        "[].SourcePartition": "Enterprise 1.11+ (omitempty: empty on CE)",
                        "[].DestinationPartition": "Enterprise 1.11+ (omitempty: empty on CE)",
                        "[].Precedence": "structs.Intention.Precedence; the docs' sample leaves it out",
                        "[].SourcePeer": "Consul 1.13+ (cluster peering)",
                        "[].Permissions": "config-entry intentions (1.9+) carry Permissions, null for L4",
                        "[].ID": "structs.Intention.ID; the dev agent derives a stable one (Consul omits it for intentions born as config entries)",
                        "[].Hash": "structs.Intention.Hash; the docs' sample leaves it out",
                        "[].CreatedAt": "structs.Intention.CreatedAt; the docs' sample leaves it out",
                        "[].UpdatedAt": "structs.Intention.UpdatedAt; the docs' sample leaves it out",
                    ].filter { enterprise || !$0.key.hasSuffix("Partition") },
                    opaque: ["[].Meta"]))

                let health = try await client.get("/v1/health/connect/web", query: [("passing", "1")])
                try check("health-connect", health.body, pick: { ($0 as? [Any])?.first }, fixturePick: { ($0 as? [Any])?.first }, Differences(
                    notFromDevAgent: [:],
                    alsoFromConsul: [
                        "Node.CreateIndex": "structs.Node carries RaftIndex", "Node.ModifyIndex": "structs.Node carries RaftIndex",
                        "Service.Kind": "structs.NodeService.Kind (a proxy's health entry is the proxy)",
                        "Service.Proxy": "structs.NodeService.Proxy", "Service.EnableTagOverride": "structs.NodeService",
                        "Service.Datacenter": "api.AgentService.Datacenter", "Service.CreateIndex": "RaftIndex",
                        "Service.ModifyIndex": "RaftIndex", "Service.Partition": "Enterprise 1.11+",
                        "Checks[].Type": "structs.HealthCheck", "Checks[].Interval": "structs.HealthCheck",
                        "Checks[].Timeout": "structs.HealthCheck", "Checks[].ExposedPort": "structs.HealthCheck",
                        "Checks[].Definition": "structs.HealthCheck", "Checks[].Partition": "Enterprise 1.11+",
                        "Checks[].CreateIndex": "RaftIndex", "Checks[].ModifyIndex": "RaftIndex",
                    ].filter { enterprise || !$0.key.hasSuffix("Partition") },
                    opaque: ["Node.Meta", "Node.TaggedAddresses", "Service.Meta", "Service.Tags", "Service.TaggedAddresses", "Checks[].ServiceTags",
                             "Service.Proxy"]))

                let claims = DevJWTIssuer.claims(subject: "example", audience: "consul", issuer: "https://issuer.example")
                let loginBody = try JSONSerialization.data(withJSONObject: ["AuthMethod": "minikube", "BearerToken": try issuer.sign(claims)])
                let login = try await client.post("/v1/acl/login", body: loginBody, token: .none)
                try check("acl-login", login.body, Differences(
                    notFromDevAgent: ["Roles": "the dev agent's auth methods bind service identities only (no roles)"],
                    opaque: ["ServiceIdentities", "Meta"]))

                let authorizeBody = try JSONSerialization.data(withJSONObject: try #require(try Fixture("agent-connect-authorize").request))
                let authorize = try await client.post("/v1/agent/connect/authorize", body: authorizeBody)
                try check("agent-connect-authorize", authorize.body, Differences())
            }
        }
    }
}

/// A structural diff of two JSON values: keys present on one side only, and values whose JSON
/// type differs (null matches an empty array or object, as Go's nil slices and maps).
struct ShapeReport {
    var missing: [String] = []
    var extra: [String] = []
    var typeMismatches: [String] = []

    mutating func compare(_ expected: Any, _ actual: Any, path: String, opaque: Set<String>) {
        if opaque.contains(path) { return }
        switch (expected, actual) {
        case (let lhs as [String: Any], let rhs as [String: Any]):
            for key in lhs.keys where rhs[key] == nil { missing.append(join(path, key)) }
            for key in rhs.keys where lhs[key] == nil { extra.append(join(path, key)) }
            for (key, value) in lhs { if let other = rhs[key] { compare(value, other, path: join(path, key), opaque: opaque) } }
        case (let lhs as [Any], let rhs as [Any]):
            guard let first = lhs.first else { return }
            for element in rhs { compare(first, element, path: path + "[]", opaque: opaque) }
        default:
            let (lhs, rhs) = (Self.kind(expected), Self.kind(actual))
            if lhs != rhs && !(lhs == "null" || rhs == "null") { typeMismatches.append("\(path): \(lhs) vs \(rhs)") }
        }
    }

    private func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    static func kind(_ value: Any) -> String {
        switch value {
        case is NSNull: return "null"
        case let number as NSNumber: return String(cString: number.objCType) == "c" ? "bool" : "number"
        case is String: return "string"
        case is [Any]: return "array"
        case is [String: Any]: return "object"
        default: return "\(type(of: value))"
        }
    }
}
