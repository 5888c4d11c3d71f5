import FoundationEssentials
import SidecarModel

/// Loads an agent config directory: every `*.json` file is a service definition (`service`
/// object or `services` array), a config entry (`Kind`), an array of config entries, or a jwt
/// auth method (`AuthMethod` / `AuthMethods`, see `DevAgentAuthMethod.load`).
enum ConfigDirectory {
    static func load(_ directory: String, into engine: AgentEngine) throws {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }.sorted()
        } catch {
            throw DevAgentError("\(directory): cannot list the config directory (\(FileSystemErrorText.describe(error)))")
        }
        // Config entries first: intentions and defaults then exist before any service shows up.
        var services: [(String, Fields)] = []
        for name in names {
            let path = FilePath.join(directory, name)
            do {
                guard let data = FileManager.default.contents(atPath: path) else { throw DevAgentError("cannot read the file") }
                let root = try JSONValue.parse(data, source: path)
                for item in try classify(Fields(root)) {
                    switch item {
                    case .service(let definition): services.append((path, definition))
                    case .configEntry(let value): try engine.writeConfigEntry(value, source: path)
                    case .authMethods(let methods): try methods.forEach(engine.addAuthMethod)
                    }
                }
            } catch {
                throw DevAgentError("\(path): \(Self.describe(error))")
            }
        }
        for (path, definition) in services {
            do { try engine.register(definition) } catch { throw DevAgentError("\(path): \(Self.describe(error))") }
        }
    }

    private enum Item {
        case service(Fields)
        case configEntry(JSONValue)
        case authMethods([DevAgentAuthMethod])
    }

    private static func classify(_ root: Fields) throws -> [Item] {
        if case .array(let items) = root.value {
            return try items.map { item in
                guard Fields(item).field("Kind") != nil else { throw DevAgentError("array items must be config entries with a Kind") }
                return .configEntry(item)
            }
        }
        guard root.isObject else { throw DevAgentError("expected a JSON object or array") }
        if let service = root.field("Service"), service.isObject { return [.service(service)] }
        if let services = try root.array("Services") { return services.map { .service($0) } }
        if root.field("Kind") != nil { return [.configEntry(root.value)] }
        if root.field("AuthMethod") != nil || root.field("AuthMethods") != nil {
            return [.authMethods(try DevAgentAuthMethod.parseAll(root))]
        }
        throw DevAgentError("neither a service definition (\"service\"/\"services\"), a config entry (\"Kind\") nor an auth method (\"AuthMethod\")")
    }

    private static func describe(_ error: Error) -> String {
        switch error {
        case let error as ConfigError: return error.path.isEmpty ? error.message : "\(error.path): \(error.message)"
        case let error as HTTPError: return error.message
        default: return "\(error)"
        }
    }
}
