import FoundationEssentials

/// Decodes a JSON array of `service-intentions` config entries (what `consul config write`
/// takes), flattening each source into an `Intention`.
package enum IntentionsFile {
    package static func load(path: String) throws -> [Intention] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(source: path, path: "", message: "cannot read file")
        }
        return try decode(data, source: path)
    }

    package static func decode(_ data: Data, source: String) throws -> [Intention] {
        let root = ConfigNode(value: try JSONValue.parse(data, source: source), path: "", source: source)
        let entries: [ConfigNode]
        if case .object = root.value { entries = [root] } else { entries = try root.array() }
        // Consul keeps one service-intentions entry per destination; two in one file would
        // make the outcome depend on their order (a later write replaces the earlier one).
        var destinations = Set<String>()
        return try entries.flatMap { entry -> [Intention] in
            let intentions = try decodeEntry(entry)
            let key = "\(try entry.optionalNonEmptyString("namespace") ?? "default")/\(try entry.requiredNonEmptyString("name"))"
            guard destinations.insert(key).inserted else {
                throw entry.error("a second service-intentions entry for \(key); Consul keeps one per destination, so merge their sources")
            }
            return intentions
        }
    }

    /// Consul: a wildcard namespace only goes with a wildcard name.
    private static func checkWildcardNamespace(_ namespace: String, name: String, in node: ConfigNode) throws {
        if namespace == "*" && name != "*" {
            throw node.error("a wildcard namespace requires the wildcard name \"*\"", at: "namespace")
        }
    }

    static func decodeEntry(_ entry: ConfigNode) throws -> [Intention] {
        let kind = try entry.require("kind").string()
        guard kind == "service-intentions" else {
            throw entry.error("kind \"\(kind)\" is not \"service-intentions\"", at: "kind")
        }
        let destination = try entry.requiredNonEmptyString("name")
        let destinationNamespace = try entry.optionalNonEmptyString("namespace") ?? "default"
        let destinationPartition = try entry.optionalNonEmptyString("partition") ?? "default"
        try checkWildcardNamespace(destinationNamespace, name: destination, in: entry)
        let entryRequiresJWT = try requiresJWT(entry)
        let sources = try entry.field("sources")?.array() ?? []
        var seen = Set<String>()
        return try sources.map { source in
            let name = try source.requiredNonEmptyString("name")
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
            let peer = try source.optionalString("peer") ?? ""
            let partition = try source.optionalNonEmptyString("partition")
            let samenessGroup = try source.optionalNonEmptyString("sameness_group") ?? ""
            // As Consul normalises: a local source inherits the destination's namespace and
            // partition (never a wildcard); a peer's or sameness group's only defaults.
            let local = peer.isEmpty && samenessGroup.isEmpty
            let inherited = (namespace: local && destinationNamespace != "*" ? destinationNamespace : "default",
                             partition: local && destinationPartition != "*" ? destinationPartition : "default")
            let sourceNamespace = try source.optionalNonEmptyString("namespace") ?? inherited.namespace
            try checkWildcardNamespace(sourceNamespace, name: name, in: source)
            // Consul: a source names at most one of a peer, a partition, a sameness group.
            if [!peer.isEmpty, partition != nil, !samenessGroup.isEmpty].filter({ $0 }).count > 1 {
                throw source.error("a source names at most one of Peer, Partition and SamenessGroup")
            }
            var intention = Intention(
                destinationName: destination,
                destinationNamespace: destinationNamespace,
                sourceName: name,
                sourceNamespace: sourceNamespace,
                sourcePartition: partition ?? inherited.partition,
                sourcePeer: peer,
                action: action,
                permissions: try permissions.map(decodePermission),
                description: try source.optionalString("description") ?? ""
            )
            intention.destinationPartition = destinationPartition
            intention.requiresJWT = entryRequiresJWT
            intention.sourceSamenessGroup = samenessGroup
            guard seen.insert(intention.identifier).inserted else {
                throw source.error("duplicate source \(intention.identifier)")
            }
            return intention
        }
    }

    /// `{Action, HTTP: {PathExact|PathPrefix|PathRegex, Methods, Header: [...]}}`, validated
    /// the way Consul validates it on write.
    static func decodePermission(_ node: ConfigNode) throws -> IntentionPermission {
        let actionText = try node.require("action").string()
        guard let action = IntentionAction(rawValue: actionText.lowercased()) else {
            throw node.error("action \"\(actionText)\" is not \"allow\" or \"deny\"", at: "action")
        }
        // A JWT requirement narrows what the permission matches and cannot be verified here:
        // kept, and the permission then denies (see IntentionSet.decide(request:)).
        let needsJWT = try requiresJWT(node)
        guard let http = try node.field("http") else {
            guard needsJWT else { throw node.error("required field is missing", at: "http") }
            return IntentionPermission(action: action, http: HTTPPermissionMatch(), requiresJWT: true)
        }
        let exact = try http.optionalString("path_exact"), prefix = try http.optionalString("path_prefix")
        let regex = try http.optionalString("path_regex")
        let path: HTTPPermissionMatch.PathRule
        switch (exact, prefix, regex) {
        case (nil, nil, nil): path = .any
        case (let exact?, nil, nil):
            guard exact.hasPrefix("/") else { throw http.error("must begin with \"/\"", at: "path_exact") }
            path = .exact(exact)
        case (nil, let prefix?, nil):
            guard prefix.hasPrefix("/") else { throw http.error("must begin with \"/\"", at: "path_prefix") }
            path = .prefix(prefix)
        case (nil, nil, let regex?):
            path = .regex(try compile(regex, node: http, field: "path_regex"))
        default:
            throw http.error("at most one of PathExact, PathPrefix, PathRegex may be set")
        }
        let methods = try http.field("methods")?.array().map { item -> String in
            let method = try item.string().uppercased()
            guard !method.isEmpty, method.allSatisfy({ $0.isLetter }) else { throw item.error("\"\(method)\" is not an HTTP method") }
            return method
        } ?? []
        let headers = try http.field("header")?.array().map(decodeHeaderRule) ?? []
        let match = HTTPPermissionMatch(path: path, methods: methods, headers: headers)
        if case .any = path, methods.isEmpty, headers.isEmpty {
            throw http.error("an HTTP permission needs a path, methods or header rule")
        }
        return IntentionPermission(action: action, http: match, requiresJWT: needsJWT)
    }

    /// A `JWT` block with at least one provider (`{"Providers": [{"Name": ...}]}`): Consul would
    /// require a valid token from one of them. Null or empty: no requirement.
    static func requiresJWT(_ node: ConfigNode) throws -> Bool {
        guard let jwt = try node.field("jwt") else { return false }
        _ = try jwt.object()
        let providers = try jwt.field("providers")?.array() ?? []
        for provider in providers { _ = try provider.requiredNonEmptyString("name") }
        return !providers.isEmpty
    }

    /// Exactly one of Present, Exact, Prefix, Suffix, Contains, Regex (Consul 1.20.1 added
    /// Contains and IgnoreCase); IgnoreCase folds the value for all but Regex and Present.
    static func decodeHeaderRule(_ node: ConfigNode) throws -> HTTPPermissionMatch.HeaderRule {
        let name = try node.requiredNonEmptyString("name")
        var conditions: [HTTPPermissionMatch.HeaderRule.Condition] = []
        if try node.field("present")?.bool() == true { conditions.append(.present) }
        if let value = try node.optionalNonEmptyString("exact") { conditions.append(.exact(value)) }
        if let value = try node.optionalNonEmptyString("prefix") { conditions.append(.prefix(value)) }
        if let value = try node.optionalNonEmptyString("suffix") { conditions.append(.suffix(value)) }
        if let value = try node.optionalNonEmptyString("contains") { conditions.append(.contains(value)) }
        if let value = try node.optionalNonEmptyString("regex") {
            conditions.append(.regex(try compile(value, node: node, field: "regex")))
        }
        guard conditions.count == 1 else {
            throw node.error("a header rule needs exactly one of Present, Exact, Prefix, Suffix, Contains, Regex (found \(conditions.count))")
        }
        let invert = try node.field("invert")?.bool() ?? false
        let ignoreCase = try node.field("ignore_case")?.bool() ?? false
        if ignoreCase {
            switch conditions[0] {
            case .present, .regex: throw node.error("IgnoreCase applies only to Exact, Prefix, Suffix and Contains", at: "ignore_case")
            default: break
            }
        }
        return HTTPPermissionMatch.HeaderRule(name: name, condition: conditions[0], invert: invert, ignoreCase: ignoreCase)
    }

    private static func compile(_ pattern: String, node: ConfigNode, field: String) throws -> FullMatchRegex {
        do {
            return try FullMatchRegex(pattern)
        } catch {
            throw node.error("invalid regular expression \"\(pattern)\" (RE2 syntax): \(error)", at: field)
        }
    }
}
