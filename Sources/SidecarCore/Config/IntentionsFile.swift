import Foundation

/// Decodes a JSON array of `service-intentions` config entries (what `consul config write`
/// takes), flattening each source into an `Intention`.
public enum IntentionsFile {
    public static func load(path: String) throws -> [Intention] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(source: path, path: "", message: "cannot read file")
        }
        return try decode(data, source: path)
    }

    public static func decode(_ data: Data, source: String) throws -> [Intention] {
        let root = ConfigNode(value: try JSONValue.parse(data, source: source), path: "", source: source)
        let entries: [ConfigNode]
        if case .object = root.value { entries = [root] } else { entries = try root.array() }
        return try entries.flatMap(decodeEntry)
    }

    static func decodeEntry(_ entry: ConfigNode) throws -> [Intention] {
        let kind = try entry.require("kind").string()
        guard kind == "service-intentions" else {
            throw entry.error("kind \"\(kind)\" is not \"service-intentions\"", at: "kind")
        }
        let destination = try entry.require("name").string()
        guard !destination.isEmpty else { throw entry.error("must not be empty", at: "name") }
        let destinationNamespace = try entry.optionalString("namespace").flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        // Consul: a wildcard namespace only goes with a wildcard name.
        if destinationNamespace == "*" && destination != "*" {
            throw entry.error("a wildcard namespace requires the wildcard name \"*\"", at: "namespace")
        }
        let sources = try entry.field("sources")?.array() ?? []
        var seen = Set<String>()
        return try sources.map { source in
            let name = try source.require("name").string()
            guard !name.isEmpty else { throw source.error("must not be empty", at: "name") }
            let action = try source.optionalString("action").map { text -> IntentionAction in
                guard let action = IntentionAction(rawValue: text.lowercased()) else {
                    throw source.error("action \"\(text)\" is not \"allow\" or \"deny\"", at: "action")
                }
                return action
            }
            let permissions = try source.field("permissions")?.array() ?? []
            switch (action, permissions.isEmpty) {
            case (nil, true): throw source.error("a source needs either action or permissions")
            case (.some, false): throw source.error("a source has either action or permissions, not both")
            default: break
            }
            let sourceNamespace = try source.optionalString("namespace").flatMap { $0.isEmpty ? nil : $0 } ?? "default"
            if sourceNamespace == "*" && name != "*" {
                throw source.error("a wildcard namespace requires the wildcard name \"*\"", at: "namespace")
            }
            let intention = Intention(
                destinationName: destination,
                destinationNamespace: destinationNamespace,
                sourceName: name,
                sourceNamespace: sourceNamespace,
                sourcePartition: try source.optionalString("partition").flatMap { $0.isEmpty ? nil : $0 } ?? "default",
                sourcePeer: try source.optionalString("peer") ?? "",
                action: action,
                hasPermissions: !permissions.isEmpty,
                description: try source.optionalString("description") ?? ""
            )
            guard seen.insert(intention.identifier).inserted else {
                throw source.error("duplicate source \(intention.identifier)")
            }
            return intention
        }
    }
}
