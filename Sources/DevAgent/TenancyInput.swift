import SidecarModel

// How the dev agent reads and names a namespace and partition, one way for every endpoint.

extension Tenancy {
    /// Itself when both names are names (no wildcard, no `/`), else 400.
    func validated() throws -> Tenancy {
        for name in [namespace, partition] where !Tenancy.isValidName(name) {
            throw HTTPError.badRequest("Invalid namespace or partition \"\(name)\"")
        }
        return self
    }

    /// `Namespace` and `Partition` for an answer: Consul Enterprise names them, CE's answers
    /// have none (omitempty, empty on CE).
    func answerFields(enterprise: Bool) -> [(String, JSON)] {
        enterprise ? [("Namespace", .string(namespace)), ("Partition", .string(partition))] : []
    }
}

extension Fields {
    /// A definition's own `Namespace`/`Partition` (a service, a config entry). On CE
    /// (`requested` nil) they are unknown fields, refused in CE's words; on Enterprise they
    /// win over the request's `?ns=`/`?partition=`.
    func tenancy(requested: Tenancy?) throws -> Tenancy {
        let namespace = try string("Namespace").flatMap { $0.isEmpty ? nil : $0 }
        let partition = try string("Partition").flatMap { $0.isEmpty ? nil : $0 }
        guard let requested else {
            if namespace != nil {
                throw HTTPError.badRequest("Request decode failed: json: unknown field \"Namespace\" - Namespaces are a Consul Enterprise feature")
            }
            if partition != nil { throw HTTPError.badRequest("Request decode failed: json: unknown field \"Partition\"") }
            return .default
        }
        return try Tenancy(namespace: namespace ?? requested.namespace, partition: partition ?? requested.partition).validated()
    }
}
