/// A Consul service identity: `spiffe://<trust-domain>[/ap/<partition>]/ns/<namespace>/dc/<dc>/svc/<service>`.
///
/// Parsing is strict on purpose: this value decides who may read and write backups, so anything
/// that is not exactly a Consul service identity is rejected rather than guessed at.
package struct SPIFFEID: Hashable, Sendable, CustomStringConvertible {
    package let trustDomain: String
    /// "default" when the URI carries no `/ap/` segment, as Consul does.
    package let partition: String
    package let namespace: String
    package let datacenter: String
    package let service: String
    /// The canonical URI: lowercase trust domain, `/ap/` only for a non-default partition,
    /// segments percent-encoded where needed. Built once: every audit line of a connection
    /// names it.
    package let uri: String

    package init(trustDomain: String, partition: String = "default", namespace: String = "default",
                datacenter: String, service: String) {
        self.trustDomain = trustDomain.lowercased()
        self.partition = partition
        self.namespace = namespace
        self.datacenter = datacenter
        self.service = service
        var path = ""
        if partition != "default" { path += "/ap/" + PercentEncoding.encodePathSegment(partition) }
        path += "/ns/" + PercentEncoding.encodePathSegment(namespace)
        path += "/dc/" + PercentEncoding.encodePathSegment(datacenter)
        path += "/svc/" + PercentEncoding.encodePathSegment(service)
        uri = "spiffe://" + self.trustDomain + path
    }

    package var description: String { uri }

    /// Same workload regardless of trust domain letter case; datacenter included.
    package func sameService(as other: SPIFFEID) -> Bool {
        trustDomain == other.trustDomain && partition == other.partition
            && namespace == other.namespace && datacenter == other.datacenter && service == other.service
    }
}

package enum SPIFFEIDError: Error, Equatable, CustomStringConvertible {
    case tooLong
    case notSPIFFEScheme
    case invalidTrustDomain(String)
    case queryOrFragment
    case notAServiceIdentity(String)
    case invalidSegment(String)

    package var description: String {
        switch self {
        case .tooLong: return "SPIFFE ID longer than 2048 bytes"
        case .notSPIFFEScheme: return "not a spiffe:// URI"
        case .invalidTrustDomain(let td): return "invalid trust domain \"\(td)\""
        case .queryOrFragment: return "SPIFFE ID must not carry a query or fragment"
        case .notAServiceIdentity(let path): return "path \"\(path)\" is not a Consul service identity"
        case .invalidSegment(let segment): return "invalid path segment \"\(segment)\""
        }
    }
}

extension SPIFFEID {
    static let maximumLength = 2048

    /// Parses a service identity URI. Throws `SPIFFEIDError` for anything else.
    package static func parse(_ uri: String) throws -> SPIFFEID {
        let (trustDomain, path) = try splitURI(uri)
        guard !path.isEmpty else { throw SPIFFEIDError.notAServiceIdentity(path) }
        // Leading "/" then pairs of (keyword, value).
        guard path.first == "/" else { throw SPIFFEIDError.notAServiceIdentity(path) }
        let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        var partition = "default"
        var rest = segments[...]
        if rest.count == 8 {
            guard rest.first == "ap" else { throw SPIFFEIDError.notAServiceIdentity(path) }
            partition = try decodeSegment(rest[rest.startIndex + 1])
            rest = rest.dropFirst(2)
        }
        guard rest.count == 6 else { throw SPIFFEIDError.notAServiceIdentity(path) }
        let keys = rest.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
        guard keys == ["ns", "dc", "svc"] else { throw SPIFFEIDError.notAServiceIdentity(path) }
        let values = try rest.enumerated().filter { $0.offset % 2 == 1 }.map { try decodeSegment($0.element) }
        return SPIFFEID(trustDomain: trustDomain, partition: partition, namespace: values[0],
                        datacenter: values[1], service: values[2])
    }

    /// The trust domain of a CA's own URI SAN (`spiffe://<td>`, no path, or just "/").
    package static func parseTrustDomainURI(_ uri: String) throws -> String {
        let (trustDomain, path) = try splitURI(uri)
        guard path.isEmpty || path == "/" else { throw SPIFFEIDError.notAServiceIdentity(path) }
        return trustDomain
    }

    private static func splitURI(_ uri: String) throws -> (trustDomain: String, path: String) {
        guard uri.utf8.count <= maximumLength else { throw SPIFFEIDError.tooLong }
        let scheme = "spiffe://"
        guard uri.count > scheme.count, uri.prefix(scheme.count).lowercased() == scheme else {
            throw SPIFFEIDError.notSPIFFEScheme
        }
        let afterScheme = uri.dropFirst(scheme.count)
        guard !afterScheme.contains("?"), !afterScheme.contains("#") else { throw SPIFFEIDError.queryOrFragment }
        let slash = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
        let rawTrustDomain = afterScheme[..<slash]
        // ASCII before lowercasing: Unicode case mapping turns the Kelvin sign (U+212A) into "k".
        guard rawTrustDomain.utf8.allSatisfy({ $0 < 0x80 }) else {
            throw SPIFFEIDError.invalidTrustDomain(String(rawTrustDomain))
        }
        let trustDomain = rawTrustDomain.lowercased()
        try validateTrustDomain(trustDomain)
        return (trustDomain, String(afterScheme[slash...]))
    }

    /// SPIFFE trust domain: letters, digits, '.', '-', '_' only (so no port, no userinfo,
    /// no percent-encoding), not empty, no empty labels.
    package static func validateTrustDomain(_ trustDomain: String) throws {
        guard !trustDomain.isEmpty, trustDomain.utf8.count <= 255,
              trustDomain.utf8.allSatisfy({ byte in
                  (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39)
                      || byte == 0x2E || byte == 0x2D || byte == 0x5F
              }),
              !trustDomain.hasPrefix("."), !trustDomain.hasSuffix("."), !trustDomain.contains("..")
        else { throw SPIFFEIDError.invalidTrustDomain(trustDomain) }
    }

    private static func decodeSegment(_ raw: String) throws -> String {
        // Dot segments are checked after decoding so "%2E%2E" cannot smuggle in "..".
        guard !raw.isEmpty, let decoded = PercentEncoding.decode(raw, accepting: PercentEncoding.isSegmentCharacter), !decoded.isEmpty,
              decoded != ".", decoded != "..",
              !decoded.contains("/"), !decoded.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        else { throw SPIFFEIDError.invalidSegment(raw) }
        return decoded
    }
}

