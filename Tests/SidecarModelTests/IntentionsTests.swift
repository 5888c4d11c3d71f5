import Foundation
import Testing
@testable import SidecarModel

private let td = "11111111-2222-3333-4444-555555555555.consul"

private func identity(_ service: String, namespace: String = "default", partition: String = "default") -> SPIFFEID {
    SPIFFEID(trustDomain: td, partition: partition, namespace: namespace, datacenter: "dc1", service: service)
}

/// All orderings of `items` (small inputs only).
private func permutations<T>(_ items: [T]) -> [[T]] {
    guard items.count > 1 else { return [items] }
    return items.indices.flatMap { index -> [[T]] in
        var rest = items
        let head = rest.remove(at: index)
        return permutations(rest).map { [head] + $0 }
    }
}

struct PrecedenceRow: Sendable, CustomTestStringConvertible {
    var destinationNamespace: String
    var destinationName: String
    var sourceNamespace: String
    var sourceName: String
    var precedence: Int

    var testDescription: String {
        "\(sourceNamespace)/\(sourceName) -> \(destinationNamespace)/\(destinationName) = \(precedence)"
    }
}

@Suite("Intentions")
struct IntentionsTests {
    // MARK: - Precedence

    /// Consul's intention precedence table (structs.Intention.UpdatePrecedence).
    static let precedenceTable: [PrecedenceRow] = [
        PrecedenceRow(destinationNamespace: "default", destinationName: "web", sourceNamespace: "default", sourceName: "api", precedence: 9),
        PrecedenceRow(destinationNamespace: "default", destinationName: "web", sourceNamespace: "default", sourceName: "*", precedence: 8),
        PrecedenceRow(destinationNamespace: "default", destinationName: "web", sourceNamespace: "*", sourceName: "*", precedence: 7),
        PrecedenceRow(destinationNamespace: "default", destinationName: "*", sourceNamespace: "default", sourceName: "api", precedence: 6),
        PrecedenceRow(destinationNamespace: "default", destinationName: "*", sourceNamespace: "default", sourceName: "*", precedence: 5),
        PrecedenceRow(destinationNamespace: "default", destinationName: "*", sourceNamespace: "*", sourceName: "*", precedence: 4),
        PrecedenceRow(destinationNamespace: "*", destinationName: "*", sourceNamespace: "default", sourceName: "api", precedence: 3),
        PrecedenceRow(destinationNamespace: "*", destinationName: "*", sourceNamespace: "default", sourceName: "*", precedence: 2),
        PrecedenceRow(destinationNamespace: "*", destinationName: "*", sourceNamespace: "*", sourceName: "*", precedence: 1),
    ]

    @Test("precedence table", arguments: precedenceTable)
    func precedence(_ row: PrecedenceRow) {
        for action in [IntentionAction?.some(.allow), .some(.deny), nil] {
            let intention = Intention(destinationName: row.destinationName, destinationNamespace: row.destinationNamespace,
                                      sourceName: row.sourceName, sourceNamespace: row.sourceNamespace,
                                      action: action, permissions: action == nil ? [IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/")))] : [])
            #expect(intention.precedence == row.precedence)
        }
        // Partition and peer do not enter precedence.
        let partitioned = Intention(destinationName: row.destinationName, destinationNamespace: row.destinationNamespace,
                                    sourceName: row.sourceName, sourceNamespace: row.sourceNamespace,
                                    sourcePartition: "*", sourcePeer: "", action: .allow)
        #expect(partitioned.precedence == row.precedence)
    }

    @Test("the table covers 9..1 exactly once and IntentionSet orders by it")
    func tableOrdering() {
        #expect(Self.precedenceTable.map(\.precedence) == Array((1...9).reversed()))
        let intentions = Self.precedenceTable.reversed().map {
            Intention(destinationName: $0.destinationName, destinationNamespace: $0.destinationNamespace,
                      sourceName: $0.sourceName, sourceNamespace: $0.sourceNamespace, action: .allow)
        }
        let set = IntentionSet(intentions, defaultAction: .deny)
        #expect(set.intentions.map(\.precedence) == Array((1...9).reversed()))
    }

    @Test("each table row matches api -> web and decides with its own precedence", arguments: precedenceTable)
    func rowDecides(_ row: PrecedenceRow) {
        let intention = Intention(destinationName: row.destinationName, destinationNamespace: row.destinationNamespace,
                                  sourceName: row.sourceName, sourceNamespace: row.sourceNamespace, action: .deny)
        let decision = IntentionSet([intention], defaultAction: .allow).decide(source: identity("api"), destination: "web")
        #expect(decision == IntentionDecision(allowed: false,
                                              reason: .intention(identifier: intention.identifier,
                                                                 precedence: row.precedence)))
    }

    // MARK: - Decisions

    @Test("exact deny beats a wildcard allow")
    func exactDenyBeatsWildcardAllow() {
        let wildcardAllow = Intention(destinationName: "web", sourceName: "*", action: .allow)
        let exactDeny = Intention(destinationName: "web", sourceName: "api", action: .deny)
        for order in permutations([wildcardAllow, exactDeny]) {
            let set = IntentionSet(order, defaultAction: .allow)
            let api = set.decide(source: identity("api"), destination: "web")
            #expect(api == IntentionDecision(allowed: false, reason: .intention(
                identifier: "default/default/api -> default/web", precedence: 9)))
            let other = set.decide(source: identity("billing"), destination: "web")
            #expect(other == IntentionDecision(allowed: true, reason: .intention(
                identifier: "default/default/* -> default/web", precedence: 8)))
        }
    }

    @Test("exact allow beats a wildcard deny")
    func exactAllowBeatsWildcardDeny() {
        let everythingDeny = Intention(destinationName: "*", destinationNamespace: "*", sourceName: "*",
                                       sourceNamespace: "*", action: .deny)
        let namespaceDeny = Intention(destinationName: "web", sourceName: "*", sourceNamespace: "*", action: .deny)
        let exactAllow = Intention(destinationName: "web", sourceName: "backup-agent", action: .allow)
        for order in permutations([everythingDeny, namespaceDeny, exactAllow]) {
            let set = IntentionSet(order, defaultAction: .allow)
            let agent = set.decide(source: identity("backup-agent"), destination: "web")
            #expect(agent.allowed)
            #expect(agent.reason == .intention(identifier: exactAllow.identifier, precedence: 9))
            let stranger = set.decide(source: identity("stranger"), destination: "web")
            #expect(!stranger.allowed)
            #expect(stranger.reason == .intention(identifier: namespaceDeny.identifier, precedence: 7))
            let elsewhere = set.decide(source: identity("backup-agent"), destination: "db")
            #expect(elsewhere == IntentionDecision(allowed: false, reason: .intention(
                identifier: everythingDeny.identifier, precedence: 1)))
        }
    }

    @Test("deny beats allow at equal precedence, whatever the lexicographic order")
    func denyFirstAtEqualPrecedence() {
        // Same precedence (partition does not count); "*" sorts before "default".
        let allowStar = Intention(destinationName: "web", sourceName: "api", sourcePartition: "*", action: .allow)
        let denyDefault = Intention(destinationName: "web", sourceName: "api", sourcePartition: "default", action: .deny)
        let denyStar = Intention(destinationName: "web", sourceName: "api", sourcePartition: "*", action: .deny)
        let allowDefault = Intention(destinationName: "web", sourceName: "api", sourcePartition: "default", action: .allow)
        #expect(allowStar.precedence == denyDefault.precedence)

        for pair in [[allowStar, denyDefault], [denyStar, allowDefault]] {
            let deny = pair.first { $0.action == .deny }!
            for order in permutations(pair) {
                let decision = IntentionSet(order, defaultAction: .allow).decide(source: identity("api"), destination: "web")
                #expect(decision == IntentionDecision(allowed: false,
                                                      reason: .intention(identifier: deny.identifier, precedence: 9)))
            }
        }
    }

    @Test("equal precedence and action: lexicographic order decides, independent of input order")
    func lexicographicTieBreak() {
        let candidates = [
            Intention(destinationName: "web", sourceName: "api", sourcePartition: "default", action: .allow,
                      description: "d"),
            Intention(destinationName: "web", sourceName: "api", sourcePartition: "*", action: .allow,
                      description: "star"),
            Intention(destinationName: "web", sourceName: "api", sourcePartition: "aaa", action: .allow,
                      description: "a"),
            Intention(destinationName: "db", sourceName: "*", sourcePartition: "*", action: .deny),
        ]
        let reference = IntentionSet(candidates, defaultAction: .deny)
        let expectedIdentifier = "*/default/api -> default/web"
        #expect(reference.decide(source: identity("api"), destination: "web").reason
            == .intention(identifier: expectedIdentifier, precedence: 9))
        #expect(reference.intentions.map(\.identifier) == [
            "*/default/api -> default/web",
            "aaa/default/api -> default/web",
            "default/default/api -> default/web",
            "*/default/* -> default/db",
        ])
        for order in permutations(candidates) {
            let set = IntentionSet(order, defaultAction: .deny)
            #expect(set.intentions == reference.intentions)
            #expect(set.decide(source: identity("api"), destination: "web").reason
                == .intention(identifier: expectedIdentifier, precedence: 9))
        }
    }

    @Test("full evaluation order: precedence, then deny first, then lexicographic")
    func evaluationOrder() {
        let intentions = [
            Intention(destinationName: "web", sourceName: "b", action: .allow),
            Intention(destinationName: "web", sourceName: "a", action: .allow),
            Intention(destinationName: "web", sourceName: "c", action: .deny),
            Intention(destinationName: "web", sourceName: "*", action: .allow),
            Intention(destinationName: "web", sourceName: "z", action: nil, permissions: [IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/")))]),
            Intention(destinationName: "*", sourceName: "a", action: .deny),
        ]
        for order in permutations(intentions) {
            let sorted = IntentionSet(order, defaultAction: .deny).intentions.map { "\($0.sourceName)>\($0.destinationName)" }
            #expect(sorted == ["c>web", "z>web", "a>web", "b>web", "*>web", "a>*"])
        }
    }

    @Test("nothing matches: the default policy decides", arguments: [IntentionAction.allow, .deny])
    func defaultPolicy(defaultAction: IntentionAction) {
        let unrelated = [
            Intention(destinationName: "db", sourceName: "api", action: .deny),
            Intention(destinationName: "web", sourceName: "other", action: .deny),
            Intention(destinationName: "web", sourceName: "api", sourceNamespace: "ops", action: .deny),
        ]
        for intentions in [[], unrelated] {
            let set = IntentionSet(intentions, defaultAction: defaultAction)
            #expect(set.defaultAction == defaultAction)
            let decision = set.decide(source: identity("api"), destination: "web")
            #expect(decision == IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy))
            #expect(decision.reasonText == "default policy")
        }
    }

    @Test("an intention for another destination is ignored")
    func destinationMismatch() {
        let set = IntentionSet([
            Intention(destinationName: "db", sourceName: "api", action: .allow),
            Intention(destinationName: "web-admin", sourceName: "*", sourceNamespace: "*", action: .allow),
        ], defaultAction: .deny)
        #expect(set.decide(source: identity("api"), destination: "web") == IntentionDecision(allowed: false, reason: .defaultPolicy))
        #expect(set.decide(source: identity("api"), destination: "db").allowed)
        #expect(set.decide(source: identity("api"), destination: "DB").reason == .defaultPolicy)
    }

    @Test("source namespace must match unless wildcard")
    func sourceNamespace() {
        let set = IntentionSet([
            Intention(destinationName: "web", sourceName: "api", sourceNamespace: "ops", action: .allow),
            Intention(destinationName: "web", sourceName: "*", sourceNamespace: "batch", action: .allow),
        ], defaultAction: .deny)
        #expect(set.decide(source: identity("api", namespace: "ops"), destination: "web").allowed)
        #expect(set.decide(source: identity("api"), destination: "web").reason == .defaultPolicy)
        #expect(set.decide(source: identity("anything", namespace: "batch"), destination: "web").reason
            == .intention(identifier: "default/batch/* -> default/web", precedence: 8))
        #expect(set.decide(source: identity("anything", namespace: "ops"), destination: "web").reason == .defaultPolicy)
    }

    @Test("destination namespace must match unless wildcard")
    func destinationNamespace() {
        let set = IntentionSet([
            Intention(destinationName: "web", destinationNamespace: "ops", sourceName: "api", action: .allow),
        ], defaultAction: .deny)
        #expect(set.decide(source: identity("api"), destination: "web", destinationNamespace: "ops").allowed)
        #expect(set.decide(source: identity("api"), destination: "web").reason == .defaultPolicy)
        #expect(set.decide(source: identity("api"), destination: "web", destinationNamespace: "dev").reason == .defaultPolicy)

        let wildcard = IntentionSet([
            Intention(destinationName: "*", destinationNamespace: "*", sourceName: "api", action: .allow),
        ], defaultAction: .deny)
        #expect(wildcard.decide(source: identity("api"), destination: "web", destinationNamespace: "anything").allowed)
    }

    @Test("source partition must match unless wildcard")
    func sourcePartition() {
        let set = IntentionSet([
            Intention(destinationName: "web", sourceName: "api", sourcePartition: "part1", action: .allow),
        ], defaultAction: .deny)
        #expect(set.decide(source: identity("api", partition: "part1"), destination: "web").allowed)
        #expect(set.decide(source: identity("api"), destination: "web").reason == .defaultPolicy)

        let any = IntentionSet([
            Intention(destinationName: "web", sourceName: "api", sourcePartition: "*", action: .allow),
        ], defaultAction: .deny)
        #expect(any.decide(source: identity("api", partition: "part9"), destination: "web").allowed)
        #expect(any.decide(source: identity("api"), destination: "web").allowed)
    }

    @Test("cluster-peer sources never match a local identity", arguments: [IntentionAction.allow, .deny])
    func peerSources(peerAction: IntentionAction) {
        let peer = Intention(destinationName: "web", sourceName: "api", sourcePeer: "cluster-b", action: peerAction)
        let peerWildcard = Intention(destinationName: "*", destinationNamespace: "*", sourceName: "*",
                                     sourceNamespace: "*", sourcePartition: "*", sourcePeer: "cluster-b",
                                     action: peerAction)
        #expect(peer.identifier == "peer:cluster-b/default/default/api -> default/web")
        let defaultAction: IntentionAction = peerAction == .allow ? .deny : .allow
        let set = IntentionSet([peer, peerWildcard], defaultAction: defaultAction)
        let decision = set.decide(source: identity("api"), destination: "web")
        #expect(decision == IntentionDecision(allowed: defaultAction == .allow, reason: .defaultPolicy))
    }

    @Test("a matching intention with L7 permissions is a deny for L4")
    func permissionsRequireL7() {
        let l7 = Intention(destinationName: "web", sourceName: "api", action: nil, permissions: [IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/")))])
        let wildcardAllow = Intention(destinationName: "web", sourceName: "*", action: .allow)
        for order in permutations([l7, wildcardAllow]) {
            let set = IntentionSet(order, defaultAction: .allow)
            let decision = set.decide(source: identity("api"), destination: "web")
            #expect(decision == IntentionDecision(allowed: false,
                                                  reason: .requiresL7(identifier: l7.identifier, precedence: 9)))
            #expect(decision.reasonText.contains("L7"))
            #expect(decision.reasonText.contains(l7.identifier))
            // Other sources fall through to the wildcard allow.
            #expect(set.decide(source: identity("web-ui"), destination: "web").allowed)
        }
        // A source with neither action nor permissions flag (only constructible in code) is also not an allow.
        let bare = Intention(destinationName: "web", sourceName: "api", action: nil)
        #expect(IntentionSet([bare], defaultAction: .allow).decide(source: identity("api"), destination: "web")
            == IntentionDecision(allowed: false, reason: .requiresL7(identifier: bare.identifier, precedence: 9)))
        // Permissions win over an action if both were somehow set.
        let both = Intention(destinationName: "web", sourceName: "api", action: .allow, permissions: [IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/")))])
        #expect(!IntentionSet([both], defaultAction: .allow).decide(source: identity("api"), destination: "web").allowed)
    }

    @Test("an L7 intention at equal precedence sorts with the denies, before an allow")
    func permissionsSortAsDeny() {
        let l7 = Intention(destinationName: "web", sourceName: "api", sourcePartition: "default", action: nil,
                           permissions: [IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/")))])
        let allow = Intention(destinationName: "web", sourceName: "api", sourcePartition: "*", action: .allow)
        for order in permutations([l7, allow]) {
            let decision = IntentionSet(order, defaultAction: .allow).decide(source: identity("api"), destination: "web")
            #expect(decision.reason == .requiresL7(identifier: l7.identifier, precedence: 9))
        }
    }

    @Test("reasonText names the intention and its precedence")
    func reasonText() {
        let intention = Intention(destinationName: "storage", destinationNamespace: "ops", sourceName: "backup-agent",
                                  sourceNamespace: "batch", sourcePartition: "part1", action: .allow)
        #expect(intention.identifier == "part1/batch/backup-agent -> ops/storage")
        let decision = IntentionSet([intention], defaultAction: .deny)
            .decide(source: identity("backup-agent", namespace: "batch", partition: "part1"),
                    destination: "storage", destinationNamespace: "ops")
        #expect(decision.allowed)
        #expect(decision.reasonText.contains(intention.identifier))
        #expect(decision.reasonText.contains("precedence 9"))
        #expect(decision.reasonText == "intention part1/batch/backup-agent -> ops/storage (precedence 9)")

        let l7 = IntentionDecision(allowed: false, reason: .requiresL7(identifier: "x/y/z -> a/b", precedence: 5))
        #expect(l7.reasonText.contains("x/y/z -> a/b"))
        #expect(l7.reasonText.contains("precedence 5"))
        #expect(!IntentionDecision(allowed: false, reason: .intentionsNotLoaded).reasonText.isEmpty)
    }

    // MARK: - IntentionsFile

    private func decodeFile(_ json: String) throws -> [Intention] {
        try IntentionsFile.decode(Data(json.utf8), source: "intentions.json")
    }

    @Test("decodes an array of PascalCase config entries")
    func fileArray() throws {
        let json = #"""
        [
          {
            "Kind": "service-intentions",
            "Name": "storage",
            "Sources": [
              { "Name": "backup-agent", "Action": "allow", "Description": "nightly backups" },
              { "Name": "*", "Action": "deny" }
            ]
          },
          {
            "Kind": "service-intentions",
            "Name": "*",
            "Namespace": "*",
            "Sources": [
              { "Name": "web", "Namespace": "ops", "Partition": "part1", "Action": "Deny" },
              { "Name": "api", "Peer": "cluster-b", "Action": "ALLOW" },
              { "Name": "ui", "Permissions": [ { "Action": "allow", "HTTP": { "PathPrefix": "/" } } ] }
            ]
          }
        ]
        """#
        let intentions = try decodeFile(json)
        #expect(intentions == [
            Intention(destinationName: "storage", sourceName: "backup-agent", action: .allow,
                      description: "nightly backups"),
            Intention(destinationName: "storage", sourceName: "*", action: .deny),
            Intention(destinationName: "*", destinationNamespace: "*", sourceName: "web", sourceNamespace: "ops",
                      sourcePartition: "part1", action: .deny),
            Intention(destinationName: "*", destinationNamespace: "*", sourceName: "api", sourcePeer: "cluster-b",
                      action: .allow),
            Intention(destinationName: "*", destinationNamespace: "*", sourceName: "ui", action: nil,
                      permissions: [IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/")))]),
        ])
        #expect(intentions.map(\.precedence) == [9, 8, 3, 3, 3])
    }

    @Test("decodes a single object with lowercase keys")
    func fileSingleLowercase() throws {
        let json = #"{"kind":"service-intentions","name":"storage","namespace":"","sources":[{"name":"backup-agent","namespace":"","partition":"","action":"allow"}]}"#
        let intentions = try decodeFile(json)
        #expect(intentions == [Intention(destinationName: "storage", sourceName: "backup-agent", action: .allow)])
    }

    @Test("an entry without sources yields no intentions")
    func fileNoSources() throws {
        #expect(try decodeFile(#"[{"Kind":"service-intentions","Name":"storage"}]"#).isEmpty)
        #expect(try decodeFile(#"[{"Kind":"service-intentions","Name":"storage","Sources":[]}]"#).isEmpty)
        #expect(try decodeFile("[]").isEmpty)
    }

    @Test("decoded file drives decisions end to end")
    func fileDecisions() throws {
        let json = #"""
        [{"Kind":"service-intentions","Name":"storage","Sources":[
            {"Name":"backup-agent","Action":"allow"},
            {"Name":"*","Action":"deny"}]}]
        """#
        let set = IntentionSet(try decodeFile(json), defaultAction: .allow)
        #expect(set.decide(source: identity("backup-agent"), destination: "storage").allowed)
        #expect(!set.decide(source: identity("web"), destination: "storage").allowed)
        #expect(set.decide(source: identity("web"), destination: "other").reason == .defaultPolicy)
    }

    struct FileErrorCase: Sendable, CustomTestStringConvertible {
        var note: String
        var json: String
        var path: String
        var messageContains: [String]
        var testDescription: String { note }
    }

    static let fileErrors: [FileErrorCase] = [
        FileErrorCase(note: "invalid JSON", json: "[{", path: "", messageContains: ["not valid JSON"]),
        FileErrorCase(note: "top-level string", json: #""x""#, path: "", messageContains: ["expected an array", "string"]),
        FileErrorCase(note: "wrong Kind", json: #"[{"Kind":"service-defaults","Name":"storage"}]"#,
                      path: "[0].kind", messageContains: ["service-defaults", "service-intentions"]),
        FileErrorCase(note: "wrong kind, single object", json: #"{"kind":"proxy-defaults","name":"global"}"#,
                      path: "kind", messageContains: ["proxy-defaults"]),
        FileErrorCase(note: "missing Kind", json: #"[{"Name":"storage"}]"#, path: "[0].kind", messageContains: ["required"]),
        FileErrorCase(note: "missing Name",
                      json: #"[{"Kind":"service-intentions","Sources":[{"Name":"a","Action":"allow"}]}]"#,
                      path: "[0].name", messageContains: ["required"]),
        FileErrorCase(note: "empty Name", json: #"[{"Kind":"service-intentions","Name":""}]"#,
                      path: "[0].name", messageContains: ["empty"]),
        FileErrorCase(note: "error in the second entry",
                      json: #"[{"Kind":"service-intentions","Name":"a"},{"Kind":"service-intentions"}]"#,
                      path: "[1].name", messageContains: ["required"]),
        FileErrorCase(note: "Sources not an array", json: #"[{"Kind":"service-intentions","Name":"a","Sources":{}}]"#,
                      path: "[0].sources", messageContains: ["expected an array"]),
        FileErrorCase(note: "source without Name",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Action":"allow"}]}]"#,
                      path: "[0].sources[0].name", messageContains: ["required"]),
        FileErrorCase(note: "source without action nor permissions",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"x","Action":"allow"},{"Name":"y"}]}]"#,
                      path: "[0].sources[1]", messageContains: ["action", "permissions"]),
        FileErrorCase(note: "source with empty permissions and no action",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Permissions":[]}]}]"#,
                      path: "[0].sources[0]", messageContains: ["action", "permissions"]),
        FileErrorCase(note: "source with both action and permissions",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"allow","Permissions":[{"Action":"deny"}]}]}]"#,
                      path: "[0].sources[0]", messageContains: ["not both"]),
        FileErrorCase(note: "bad action permit",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"permit"}]}]"#,
                      path: "[0].sources[0].action", messageContains: ["\"permit\""]),
        FileErrorCase(note: "duplicate source",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"allow"},{"Name":"y","Action":"deny"}]}]"#,
                      path: "[0].sources[1]", messageContains: ["duplicate", "default/default/y -> default/a"]),
        FileErrorCase(note: "duplicate source via explicit default namespace",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"allow"},{"Name":"z","Action":"allow"},{"Name":"y","Namespace":"default","Partition":"default","Action":"allow"}]}]"#,
                      path: "[0].sources[2]", messageContains: ["duplicate"]),
        // Found by IntentionsFuzz's order invariant: two entries for one destination made the
        // decision depend on which came first.
        FileErrorCase(note: "two entries for the same destination",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"allow"}]},{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"deny"}]}]"#,
                      path: "[1]", messageContains: ["second service-intentions entry", "default/a", "merge"]),
        FileErrorCase(note: "two entries for the same destination, namespace spelled out",
                      json: #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"allow"}]},{"Kind":"service-intentions","Name":"a","Namespace":"default","Sources":[{"Name":"z","Action":"allow"}]}]"#,
                      path: "[1]", messageContains: ["second service-intentions entry"]),
    ]

    @Test("refused intention files name the field path", arguments: fileErrors)
    func fileRefused(_ testCase: FileErrorCase) {
        let error = #expect(throws: ConfigError.self) { try decodeFile(testCase.json) }
        guard let error else { return }
        #expect(error.source == "intentions.json")
        #expect(error.path == testCase.path)
        for needle in testCase.messageContains {
            #expect(error.message.contains(needle), "message \"\(error.message)\" lacks \"\(needle)\"")
        }
        #expect(error.description.contains("intentions.json"))
        if !testCase.path.isEmpty {
            #expect(error.description.contains(": \(testCase.path): "))
        }
    }

    @Test("the same source name for different destinations is not a duplicate")
    func sameSourceDifferentEntries() throws {
        let json = #"[{"Kind":"service-intentions","Name":"a","Sources":[{"Name":"y","Action":"allow"}]},{"Kind":"service-intentions","Name":"b","Sources":[{"Name":"y","Action":"allow"}]}]"#
        #expect(try decodeFile(json).map(\.destinationName) == ["a", "b"])
    }
}
