import FoundationEssentials
import SidecarModel
import SidecarTLS

struct ConfigEntryKey: Hashable, Sendable {
    var kind: String
    var name: String
    var tenancy = Tenancy.default
}

/// A stored config entry: its PascalCase rendering and, for `service-intentions`, the
/// intentions it defines (one per source, in source order, with the source's rendering).
struct ConfigEntryRecord: Sendable {
    var kind: String
    var name: String
    /// The entry's namespace and partition (Consul Enterprise; default on CE).
    var tenancy = Tenancy.default
    var body: JSON
    var intentions: [(intention: Intention, source: JSON)] = []
    var createdAt: Date
    var updatedAt: Date
    var createIndex: UInt64 = 0
    var modifyIndex: UInt64 = 0

    static let supportedKinds: Set<String> = ["service-intentions", "proxy-defaults", "service-defaults"]

    /// Validates one entry (PascalCase or snake_case) the way `PUT /v1/config` would.
    /// `tenancy`: the request's on Consul Enterprise (the entry's own fields win), nil on CE.
    static func parse(_ value: JSONValue, source: String, tenancy requested: Tenancy? = nil) throws -> ConfigEntryRecord {
        let fields = Fields(value)
        guard fields.isObject else { throw HTTPError.badRequest("Request decode failed: a config entry must be a JSON object") }
        guard let kind = try fields.string("Kind"), !kind.isEmpty else { throw HTTPError.badRequest("Request decode failed: missing Kind") }
        guard supportedKinds.contains(kind) else { throw HTTPError.badRequest("invalid config entry kind: \(kind)") }
        guard let name = try fields.string("Name"), !name.isEmpty else { throw HTTPError.badRequest("Request decode failed: missing Name") }
        if kind == "proxy-defaults" && name != "global" {
            throw HTTPError.badRequest("invalid name (\"\(name)\"), only \"global\" is supported")
        }
        var bodyFields: [(String, JSON)] = []
        if case .object(let converted) = PascalCase.convert(value) {
            bodyFields = converted.filter { !["Kind", "Name", "CreateIndex", "ModifyIndex"].contains($0.0) }
        }
        let tenancy = try fields.tenancy(requested: requested)
        if requested != nil {
            bodyFields = bodyFields.filter { $0.0 != "Namespace" && $0.0 != "Partition" } + tenancy.answerFields(enterprise: true)
        }
        var record = ConfigEntryRecord(kind: kind, name: name, tenancy: tenancy,
                                       body: .object([("Kind", .string(kind)), ("Name", .string(name))] + bodyFields),
                                       createdAt: Date(), updatedAt: Date())
        if kind == "service-intentions" {
            let intentions: [Intention]
            // The intentions read with the entry's tenancy filled in, as Consul normalises it.
            var normalized = value
            if requested != nil, case .object(var members) = value {
                for key in members.keys where ["namespace", "partition"].contains(key.lowercased()) { members[key] = nil }
                members["Namespace"] = .string(tenancy.namespace)
                members["Partition"] = .string(tenancy.partition)
                normalized = .object(members)
            }
            do {
                intentions = try IntentionsFile.decode(normalized.data, source: source)
            } catch let error as ConfigError {
                throw HTTPError.badRequest("Invalid config entry: \(error.path.isEmpty ? "" : error.path + ": ")\(error.message)")
            }
            let sources: [JSON]
            if case .array(let items)? = bodyFields.first(where: { $0.0 == "Sources" })?.1 { sources = items } else { sources = [] }
            record.intentions = zip(intentions, sources).map { ($0, $1) }
        }
        return record
    }

    func rendered() -> JSON {
        guard case .object(let fields) = body else { return body }
        return .object(fields + [("CreateIndex", .uint(createIndex)), ("ModifyIndex", .uint(modifyIndex))])
    }
}

extension AgentState {
    mutating func writeConfigEntry(_ entry: ConfigEntryRecord) {
        let index = nextIndex()
        let key = ConfigEntryKey(kind: entry.kind, name: entry.name, tenancy: entry.tenancy)
        var entry = entry
        if let existing = configEntries[key] {
            entry.createIndex = existing.createIndex
            entry.createdAt = existing.createdAt
        } else {
            entry.createIndex = index
        }
        entry.modifyIndex = index
        configEntries[key] = entry
        configIndex = index
    }

    mutating func deleteConfigEntry(kind: String, name: String, tenancy: Tenancy = .default) {
        let index = nextIndex()
        configEntries[ConfigEntryKey(kind: kind, name: name, tenancy: tenancy)] = nil
        configIndex = index
    }

    /// The intentions that apply to destination `name` (exact, then `*`), in Consul's
    /// evaluation order, with the entry each came from.
    func intentions(forDestination name: String, tenancy: Tenancy = .default) -> [(Intention, JSON, ConfigEntryRecord)] {
        let entries = [name, "*"].compactMap { configEntries[ConfigEntryKey(kind: "service-intentions", name: $0, tenancy: tenancy)] }
        var byIdentifier: [String: (JSON, ConfigEntryRecord)] = [:]
        for entry in entries { for item in entry.intentions { byIdentifier[item.intention.identifier] = (item.source, entry) } }
        // Consul's IntentionPrecedenceSorter: precedence, then the names lexicographically.
        let ordered = entries.flatMap { $0.intentions.map(\.intention) }.sorted { lhs, rhs in
            if lhs.precedence != rhs.precedence { return lhs.precedence > rhs.precedence }
            return (lhs.sourceNamespace, lhs.sourceName, lhs.destinationNamespace, lhs.destinationName)
                < (rhs.sourceNamespace, rhs.sourceName, rhs.destinationNamespace, rhs.destinationName)
        }
        return ordered.compactMap { intention in byIdentifier[intention.identifier].map { (intention, $0.0, $0.1) } }
    }
}

/// Consul's `structs.Intention` for intentions defined by config entries.
enum IntentionRendering {
    /// Partitions are omitempty and empty on CE; namespaces are always named ("default").
    static func render(_ intention: Intention, source: JSON, entry: ConfigEntryRecord, enterprise: Bool) -> JSON {
        var permissions = JSON.null
        if case .object(let fields) = source, let given = fields.first(where: { $0.0 == "Permissions" }) { permissions = given.1 }
        var meta = JSON.object([])
        var jwt: JSON?
        if case .object(let fields) = entry.body {
            if let given = fields.first(where: { $0.0 == "Meta" }) { meta = given.1 }
            // Consul copies the entry's JWT requirement onto each of its intentions.
            jwt = fields.first(where: { $0.0 == "JWT" })?.1
        }
        var rendered: [(String, JSON)] = [
            ("ID", .string(stableID(intention.identifier))),
            ("Description", .string(intention.description)),
            ("SourcePeer", .string(intention.sourcePeer)),
            ("SourceNS", .string(intention.sourceNamespace)),
            ("SourceName", .string(intention.sourceName)),
            ("DestinationNS", .string(intention.destinationNamespace)),
            ("DestinationName", .string(intention.destinationName)),
        ]
        if enterprise {
            rendered += [("SourcePartition", .string(intention.sourcePartition)),
                         ("DestinationPartition", .string(intention.destinationPartition))]
        }
        rendered += [
            ("SourceType", .string("consul")),
            ("Action", .string(intention.action?.rawValue ?? "")),
            ("Permissions", intention.hasPermissions ? permissions : .null),
            ("Meta", meta),
            ("Precedence", .int(intention.precedence)),
            ("CreatedAt", .string(Timestamp.rfc3339(entry.createdAt, .seconds))),
            ("UpdatedAt", .string(Timestamp.rfc3339(entry.updatedAt, .seconds))),
            ("Hash", .string(Data(Digest.sha256(Array((intention.identifier + source.serialized()).utf8))).base64EncodedString())),
            ("CreateIndex", .uint(entry.createIndex)),
            ("ModifyIndex", .uint(entry.modifyIndex)),
        ]
        if !intention.sourceSamenessGroup.isEmpty { rendered.append(("SourceSamenessGroup", .string(intention.sourceSamenessGroup))) }
        if let jwt, jwt != .null { rendered.append(("JWT", jwt)) }
        return .object(rendered)
    }

    /// A UUID derived from the intention's identity: stable across restarts and re-writes.
    static func stableID(_ identifier: String) -> String {
        var bytes = Array(Digest.sha256(Array(identifier.utf8)).prefix(16))
        bytes[6] = bytes[6] & 0x0f | 0x50
        bytes[8] = bytes[8] & 0x3f | 0x80
        let hex = Format.hex(bytes)
        let parts = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { range -> String in
            let start = hex.index(hex.startIndex, offsetBy: range.lowerBound)
            return String(hex[start..<hex.index(start, offsetBy: range.count)])
        }
        return parts.joined(separator: "-")
    }

    /// `POST /v1/agent/connect/authorize`.
    static func authorize(_ state: AgentState, target: String, tenancy: Tenancy = .default, clientCertURI: String,
                          defaultAction: IntentionAction) throws -> JSON {
        let source: SPIFFEID
        do {
            source = try SPIFFEID.parse(clientCertURI)
        } catch {
            throw HTTPError.badRequest("ClientCertURI not a valid Connect identifier")
        }
        guard source.trustDomain.lowercased() == state.ca.trustDomain.lowercased() else {
            return .object([("Authorized", .bool(false)),
                            ("Reason", .string("Client certificate trust domain \(source.trustDomain) is not trusted"))])
        }
        let set = IntentionSet(state.intentions(forDestination: target, tenancy: tenancy).map(\.0), defaultAction: defaultAction)
        let decision = set.decide(source: source, destination: target, destinationNamespace: tenancy.namespace,
                                  destinationPartition: tenancy.partition)
        let reason: String
        switch decision.reason {
        case .defaultPolicy: reason = "Default behavior configured by DefaultIntentionPolicy"
        case .intention(let id, _): reason = "Matched L4 intention: \(id)"
        case .requiresL7(let id, _): reason = "Matched intention \(id) has L7 permissions; an L4 connection is denied"
        default: reason = decision.reasonText
        }
        return .object([("Authorized", .bool(decision.allowed)), ("Reason", .string(reason))])
    }
}
