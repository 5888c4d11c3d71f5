import Foundation
@testable import SidecarTLS
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarModel

/// Intention conditions the sidecar cannot evaluate (a JWT, a sameness group) are kept and
/// decide deny; intentions for another destination partition do not apply. Nothing the
/// sidecar cannot check may widen an allow.
@Suite("Intentions: what cannot be evaluated fails closed")
struct FailClosedIntentionTests {
    static let agent = SPIFFEID(trustDomain: "td.consul", datacenter: "dc1", service: "backup-agent")
    static let other = SPIFFEID(trustDomain: "td.consul", datacenter: "dc1", service: "billing")

    static func set(_ json: String, default action: IntentionAction = .deny) throws -> IntentionSet {
        IntentionSet(try IntentionsFile.decode(Data(json.utf8), source: "test.json"), defaultAction: action)
    }

    static func get(_ path: String, _ headers: [(name: String, value: String)] = []) -> HTTPRequestFacts {
        HTTPRequestFacts(method: "GET", path: path, headers: headers)
    }

    static let entryJWT = """
        [{"Kind": "service-intentions", "Name": "storage",
          "JWT": {"Providers": [{"Name": "okta", "VerifyClaims": [{"Path": ["perms"], "Value": "backup"}]}]},
          "Sources": [{"Name": "backup-agent", "Action": "allow"},
                      {"Name": "restore-agent", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]}]
        """

    @Test("an entry-level JWT denies every HTTP request its intentions govern, and the connection on an L7 listener")
    func entryJWT() throws {
        let set = try Self.set(Self.entryJWT, default: .allow)
        let request = set.decide(request: Self.get("/repository/x"), source: Self.agent, destination: "storage")
        #expect(!request.allowed)
        #expect(request.reasonText.contains("requires a JWT, which this sidecar cannot verify"), "\(request.reasonText)")
        let connection = set.decide(source: Self.agent, destination: "storage", l7: true)
        #expect(!connection.allowed)
        let restore = SPIFFEID(trustDomain: "td.consul", datacenter: "dc1", service: "restore-agent")
        #expect(!set.decide(request: Self.get("/x"), source: restore, destination: "storage").allowed)
        // Consul ignores JWT on TCP listeners; so do we.
        #expect(set.decide(source: Self.agent, destination: "storage", l7: false).allowed)
        // Sources without an intention are the default policy's, JWT or not (as in Consul).
        #expect(set.decide(request: Self.get("/x"), source: Self.other, destination: "storage").allowed)
        #expect(set.unevaluableConditions.count == 2, "\(set.unevaluableConditions)")
    }

    static let permissionJWT = """
        [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
          {"Action": "allow", "HTTP": {"PathPrefix": "/admin/"}, "JWT": {"Providers": [{"Name": "okta"}]}},
          {"Action": "deny", "HTTP": {"PathPrefix": "/audit/"}, "JWT": {"Providers": [{"Name": "okta"}]}},
          {"Action": "allow", "HTTP": {"PathPrefix": "/"}}
        ]}]}]
        """

    @Test("a permission requiring a JWT denies what it matches, allow or deny, and stops the search",
          arguments: [("/admin/x", false), ("/audit/log", false), ("/repository/x", true)])
    func permissionJWT(_ path: String, _ allowed: Bool) throws {
        let set = try Self.set(Self.permissionJWT)
        let decision = set.decide(request: Self.get(path), source: Self.agent, destination: "storage")
        #expect(decision.allowed == allowed, "\(path): \(decision.reasonText)")
        if !allowed { #expect(decision.reasonText.contains("requires a JWT")) }
        #expect(set.decide(source: Self.agent, destination: "storage", l7: true).allowed, "the connection is let in")
    }

    @Test("a permission that is only a JWT requirement decodes and denies everything")
    func jwtOnlyPermission() throws {
        let set = try Self.set("""
            [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
              {"Action": "allow", "JWT": {"Providers": [{"Name": "okta"}]}}]}]}]
            """, default: .allow)
        #expect(!set.decide(request: Self.get("/"), source: Self.agent, destination: "storage").allowed)
    }

    @Test("an empty or null JWT is no requirement", arguments: [#""JWT": null"#, #""JWT": {"Providers": []}"#, #""JWT": {}"#])
    func emptyJWT(_ field: String) throws {
        let set = try Self.set("""
            [{"Kind": "service-intentions", "Name": "storage", \(field), "Sources": [{"Name": "backup-agent", "Action": "allow"}]}]
            """)
        #expect(set.decide(request: Self.get("/"), source: Self.agent, destination: "storage").allowed)
        #expect(set.unevaluableConditions.isEmpty)
    }

    @Test("a sameness-group source decides deny for its name in any partition; an allow for it never applies")
    func samenessGroup() throws {
        let set = try Self.set("""
            [{"Kind": "service-intentions", "Name": "storage", "Sources": [
              {"Name": "backup-agent", "SamenessGroup": "backup-sites", "Action": "allow"},
              {"Name": "*", "Action": "allow"}]}]
            """)
        let decision = set.decide(source: Self.agent, destination: "storage")
        #expect(!decision.allowed)
        #expect(decision.reasonText.contains("sameness group backup-sites"), "\(decision.reasonText)")
        let elsewhere = SPIFFEID(trustDomain: "td.consul", partition: "eu", namespace: "default", datacenter: "dc1", service: "backup-agent")
        #expect(!set.decide(source: elsewhere, destination: "storage").allowed)
        #expect(set.decide(source: Self.other, destination: "storage").allowed)
    }

    @Test("a source naming two of Peer, Partition and SamenessGroup is refused, as Consul refuses it")
    func samenessExclusive() {
        #expect(throws: ConfigError.self) {
            try Self.set("""
                [{"Kind": "service-intentions", "Name": "storage", "Sources": [
                  {"Name": "backup-agent", "SamenessGroup": "g", "Peer": "p", "Action": "allow"}]}]
                """)
        }
    }

    @Test("intentions for the same name in another destination partition do not apply")
    func destinationPartition() throws {
        let set = try Self.set("""
            [{"Kind": "service-intentions", "Name": "storage", "Partition": "eu", "Sources": [{"Name": "backup-agent", "Action": "allow"}]}]
            """)
        let decision = set.decide(source: Self.agent, destination: "storage")
        #expect(!decision.allowed)
        #expect(decision.reason == .defaultPolicy)
        // A local source inherits the destination's partition, as Consul normalises it.
        #expect(set.intentions.first?.identifier == "eu/default/backup-agent -> eu/default/storage")
        let inEU = SPIFFEID(trustDomain: "td.consul", partition: "eu", namespace: "default", datacenter: "dc1", service: "backup-agent")
        #expect(set.decide(source: inEU, destination: "storage", destinationPartition: "eu").allowed, "a sidecar in eu applies it")
        #expect(!set.decide(source: Self.agent, destination: "storage", destinationPartition: "eu").allowed,
                "default/backup-agent is not the source it names")
    }

    @Test("IgnoreCase with Regex or Present is refused at load, as Consul refuses it", arguments: [
        #"{"Name": "x", "Regex": "a.*", "IgnoreCase": true}"#, #"{"Name": "x", "Present": true, "IgnoreCase": true}"#,
    ])
    func ignoreCaseOnlyWithStrings(_ rule: String) {
        let error = #expect(throws: ConfigError.self) {
            try Self.set("""
                [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
                  {"Action": "deny", "HTTP": {"Header": [\(rule)]}}]}]}]
                """)
        }
        #expect(error?.message.contains("IgnoreCase applies only") == true)
    }

    @Test("Consul's match answer: the entry's JWT, a sameness group and the destination partition are read")
    func matchAnswer() throws {
        let json = """
            {"storage": [
              {"SourceName": "backup-agent", "SourceNS": "default", "DestinationName": "storage", "DestinationNS": "default",
               "Action": "allow", "Precedence": 9, "JWT": {"Providers": [{"Name": "okta"}]}},
              {"SourceName": "restore-agent", "SourceSamenessGroup": "sites", "DestinationName": "storage", "Action": "allow"},
              {"SourceName": "billing", "DestinationName": "storage", "DestinationPartition": "eu", "Action": "allow"},
              {"SourceName": "web", "DestinationName": "storage", "Permissions": [
                 {"Action": "allow", "HTTP": {"PathPrefix": "/"}, "JWT": {"Providers": [{"Name": "okta"}]}}]}
            ]}
            """
        let intentions = try ConsulIntentionMatch.decode(Data(json.utf8), source: "match", destination: "storage")
        #expect(intentions.map(\.requiresJWT) == [true, false, false, false])
        #expect(intentions.map(\.sourceSamenessGroup) == ["", "sites", "", ""])
        #expect(intentions.map(\.destinationPartition) == ["default", "default", "eu", "default"])
        #expect(intentions[3].permissions.first?.requiresJWT == true)
        let set = IntentionSet(intentions, defaultAction: .allow)
        #expect(!set.decide(request: Self.get("/"), source: Self.agent, destination: "storage").allowed)
        #expect(!set.decide(source: SPIFFEID(trustDomain: "td.consul", datacenter: "dc1", service: "restore-agent"),
                            destination: "storage").allowed)
        #expect(set.decide(source: Self.other, destination: "storage").reason == .defaultPolicy)
    }
}
