import FoundationEssentials

/// A Consul Enterprise namespace and admin partition. Consul CE has neither: its answers carry
/// no `Namespace`/`Partition` and it refuses any `?ns=`/`?partition=` with 400, so "not
/// stated" (nil where a Tenancy is optional) is kept apart from an explicit "default".
package struct Tenancy: Hashable, Sendable, CustomStringConvertible {
    package var namespace: String
    package var partition: String

    package static let `default` = Tenancy(namespace: "default", partition: "default")

    package init(namespace: String = "default", partition: String = "default") {
        self.namespace = namespace
        self.partition = partition
    }

    package static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
        }
    }

    /// `partition/namespace`, or `namespace` alone in the default partition.
    package var description: String { partition == "default" ? namespace : "\(partition)/\(namespace)" }

    /// The query parameters that ask Consul Enterprise for this tenancy.
    package var queryItems: [(String, String)] { [("ns", namespace), ("partition", partition)] }

    /// A registration's `Namespace` and `Partition` (any spelling); nil when it states neither.
    static func decode(_ node: ConfigNode) throws -> Tenancy? {
        let namespace = try node.optionalNonEmptyString("namespace")
        let partition = try node.optionalNonEmptyString("partition")
        guard namespace != nil || partition != nil else { return nil }
        try validate(namespace, field: "namespace", in: node)
        try validate(partition, field: "partition", in: node)
        return Tenancy(namespace: namespace ?? "default", partition: partition ?? "default")
    }

    /// Names as Consul Enterprise allows them (a DNS label, `_` also): anything else, a
    /// wildcard included, would become an odd SPIFFE ID or query rather than a tenancy.
    static func validate(_ name: String?, field: String, in node: ConfigNode) throws {
        guard let name else { return }
        guard isValidName(name) else {
            throw node.error("\"\(name)\" is not a namespace or partition name (letters, digits, - and _, at most 64)", at: field)
        }
    }
}
