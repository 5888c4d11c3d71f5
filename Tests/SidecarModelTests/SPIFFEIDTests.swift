import Testing
@testable import SidecarModel

/// One URI that `SPIFFEID.parse` must accept, with the fields it must produce.
struct ValidSPIFFECase: Sendable, CustomTestStringConvertible {
    var uri: String
    var trustDomain: String
    var partition = "default"
    var namespace = "default"
    var datacenter = "dc1"
    var service: String
    /// What `uri` must print for the parsed value.
    var canonical: String

    var testDescription: String { uri }
}

/// One URI that `SPIFFEID.parse` must refuse, with the exact error.
struct InvalidSPIFFECase: Sendable, CustomTestStringConvertible {
    var uri: String
    var error: SPIFFEIDError
    var note: String

    init(_ uri: String, _ error: SPIFFEIDError, _ note: String) {
        self.uri = uri
        self.error = error
        self.note = note
    }

    var testDescription: String { "\(note): \(uri.count > 80 ? String(uri.prefix(80)) + "…" : uri)" }
}

private let uuidTD = "11111111-2222-3333-4444-555555555555.consul"
private let base = "spiffe://\(uuidTD)"
private let svcPath = "/ns/default/dc/dc1/svc/web"

@Suite("SPIFFEID")
struct SPIFFEIDTests {
    // MARK: - Accepted forms

    static let validCases: [ValidSPIFFECase] = [
        ValidSPIFFECase(uri: base + svcPath, trustDomain: uuidTD, service: "web",
                        canonical: base + svcPath),
        ValidSPIFFECase(uri: base + "/ap/part1/ns/default/dc/dc1/svc/web", trustDomain: uuidTD,
                        partition: "part1", service: "web",
                        canonical: base + "/ap/part1/ns/default/dc/dc1/svc/web"),
        // An explicit default partition is the same identity and prints without /ap/.
        ValidSPIFFECase(uri: base + "/ap/default/ns/default/dc/dc1/svc/web", trustDomain: uuidTD,
                        service: "web", canonical: base + svcPath),
        ValidSPIFFECase(uri: base + "/ap/p-1/ns/team-a/dc/us-east-1/svc/backup_agent", trustDomain: uuidTD,
                        partition: "p-1", namespace: "team-a", datacenter: "us-east-1", service: "backup_agent",
                        canonical: base + "/ap/p-1/ns/team-a/dc/us-east-1/svc/backup_agent"),
        ValidSPIFFECase(uri: base + "/ns/default/dc/dc1/svc/my%20svc", trustDomain: uuidTD, service: "my svc",
                        canonical: base + "/ns/default/dc/dc1/svc/my%20svc"),
        // Lowercase hex escapes decode the same; the canonical form uses uppercase hex.
        ValidSPIFFECase(uri: base + "/ns/default/dc/dc1/svc/caf%c3%a9", trustDomain: uuidTD, service: "café",
                        canonical: base + "/ns/default/dc/dc1/svc/caf%C3%A9"),
        // Escaped pchar characters decode and are printed unescaped.
        ValidSPIFFECase(uri: base + "/ns/default/dc/dc1/svc/%77%65%62", trustDomain: uuidTD, service: "web",
                        canonical: base + svcPath),
        // '?' and '#' are fine inside a segment when escaped; printed escaped again.
        ValidSPIFFECase(uri: base + "/ns/default/dc/dc1/svc/w%3Fe%23b", trustDomain: uuidTD, service: "w?e#b",
                        canonical: base + "/ns/default/dc/dc1/svc/w%3Fe%23b"),
        // sub-delims, ':' and '@' are pchar and stay literal.
        ValidSPIFFECase(uri: base + "/ns/a:b@c/dc/dc1/svc/x!$&'()*+,;=~", trustDomain: uuidTD,
                        namespace: "a:b@c", service: "x!$&'()*+,;=~",
                        canonical: base + "/ns/a:b@c/dc/dc1/svc/x!$&'()*+,;=~"),
        // A segment that merely contains dots is not a dot-segment.
        ValidSPIFFECase(uri: base + "/ns/default/dc/dc1/svc/...", trustDomain: uuidTD, service: "...",
                        canonical: base + "/ns/default/dc/dc1/svc/..."),
        ValidSPIFFECase(uri: base + "/ns/default/dc/dc1/svc/.hidden", trustDomain: uuidTD, service: ".hidden",
                        canonical: base + "/ns/default/dc/dc1/svc/.hidden"),
        // Trust domain is case-insensitive and normalized to lowercase.
        ValidSPIFFECase(uri: "spiffe://11111111-2222-3333-4444-555555555555.CONSUL" + svcPath,
                        trustDomain: uuidTD, service: "web", canonical: base + svcPath),
        ValidSPIFFECase(uri: "spiffe://Example.Org" + svcPath, trustDomain: "example.org", service: "web",
                        canonical: "spiffe://example.org" + svcPath),
        // Scheme is case-insensitive.
        ValidSPIFFECase(uri: "SPIFFE://" + uuidTD + svcPath, trustDomain: uuidTD, service: "web",
                        canonical: base + svcPath),
        ValidSPIFFECase(uri: "SpIfFe://" + uuidTD + svcPath, trustDomain: uuidTD, service: "web",
                        canonical: base + svcPath),
        // Trust domain characters: letters, digits, '.', '-', '_'.
        ValidSPIFFECase(uri: "spiffe://a_b-c.9" + svcPath, trustDomain: "a_b-c.9", service: "web",
                        canonical: "spiffe://a_b-c.9" + svcPath),
        // Path values are case-sensitive (only the trust domain is folded).
        ValidSPIFFECase(uri: base + "/ns/Team/dc/DC1/svc/Web", trustDomain: uuidTD, namespace: "Team",
                        datacenter: "DC1", service: "Web", canonical: base + "/ns/Team/dc/DC1/svc/Web"),
        // Keywords may appear as values.
        ValidSPIFFECase(uri: base + "/ap/ns/ns/svc/dc/dc/svc/ap", trustDomain: uuidTD, partition: "ns",
                        namespace: "svc", datacenter: "dc", service: "ap",
                        canonical: base + "/ap/ns/ns/svc/dc/dc/svc/ap"),
    ]

    @Test("parses valid service identities", arguments: validCases)
    func parsesValid(_ testCase: ValidSPIFFECase) throws {
        let id = try SPIFFEID.parse(testCase.uri)
        #expect(id.trustDomain == testCase.trustDomain)
        #expect(id.partition == testCase.partition)
        #expect(id.namespace == testCase.namespace)
        #expect(id.datacenter == testCase.datacenter)
        #expect(id.service == testCase.service)
        #expect(id.uri == testCase.canonical)
        #expect(id.description == testCase.canonical)
    }

    @Test("canonical uri parses back to the same value", arguments: validCases)
    func roundTrip(_ testCase: ValidSPIFFECase) throws {
        let id = try SPIFFEID.parse(testCase.uri)
        let again = try SPIFFEID.parse(id.uri)
        #expect(again == id)
        #expect(again.uri == id.uri)
    }

    // MARK: - uri printing from constructed values

    @Test("uri omits the default partition and includes any other")
    func uriPartition() {
        let plain = SPIFFEID(trustDomain: "td.consul", datacenter: "dc1", service: "web")
        #expect(plain.uri == "spiffe://td.consul/ns/default/dc/dc1/svc/web")
        let partitioned = SPIFFEID(trustDomain: "td.consul", partition: "finance", namespace: "ops",
                                   datacenter: "dc2", service: "db")
        #expect(partitioned.uri == "spiffe://td.consul/ap/finance/ns/ops/dc/dc2/svc/db")
        // "Default" is not "default": partition names are case-sensitive.
        let capital = SPIFFEID(trustDomain: "td", partition: "Default", datacenter: "dc1", service: "web")
        #expect(capital.uri == "spiffe://td/ap/Default/ns/default/dc/dc1/svc/web")
    }

    @Test("uri percent-encodes everything outside pchar, uppercase hex", arguments: [
        ("my svc", "my%20svc"),
        ("a/b", "a%2Fb"),
        ("a%b", "a%25b"),
        ("q?x", "q%3Fx"),
        ("h#x", "h%23x"),
        ("café", "caf%C3%A9"),
        ("tab\tx", "tab%09x"),
        ("[v6]", "%5Bv6%5D"),
        ("a\"b", "a%22b"),
        ("x!$&'()*+,;=:@~-._", "x!$&'()*+,;=:@~-._"),
    ])
    func uriEncoding(raw: String, encoded: String) {
        let id = SPIFFEID(trustDomain: "td", datacenter: "dc1", service: raw)
        #expect(id.uri == "spiffe://td/ns/default/dc/dc1/svc/" + encoded)
        #expect(PercentEncoding.encodePathSegment(raw) == encoded)
    }

    @Test("init lowercases the trust domain only")
    func initNormalizes() {
        let id = SPIFFEID(trustDomain: "TD.Consul", partition: "P", namespace: "N", datacenter: "D", service: "S")
        #expect(id.trustDomain == "td.consul")
        #expect(id.partition == "P")
        #expect(id.namespace == "N")
        #expect(id.datacenter == "D")
        #expect(id.service == "S")
    }

    @Test("encoded then parsed values survive unchanged", arguments: [
        "web", "my svc", "100%", "a?b#c", "naïve", "日本", "x y_z", "~tilde",
    ])
    func encodeParseRoundTrip(service: String) throws {
        let id = SPIFFEID(trustDomain: "td.consul", partition: "p q", namespace: "n%", datacenter: "d é",
                          service: service)
        let parsed = try SPIFFEID.parse(id.uri)
        #expect(parsed == id)
    }

    // MARK: - sameService

    @Test("sameService compares every field, not letter case of the trust domain")
    func sameService() throws {
        let web = try SPIFFEID.parse(base + svcPath)
        #expect(web.sameService(as: web))
        #expect(web.sameService(as: SPIFFEID(trustDomain: uuidTD.uppercased(), datacenter: "dc1", service: "web")))
        #expect(web.sameService(as: try SPIFFEID.parse(base + "/ap/default/ns/default/dc/dc1/svc/web")))
        #expect(web.sameService(as: try SPIFFEID.parse("SPIFFE://" + uuidTD.uppercased() + svcPath)))

        #expect(!web.sameService(as: SPIFFEID(trustDomain: "other.consul", datacenter: "dc1", service: "web")))
        #expect(!web.sameService(as: SPIFFEID(trustDomain: uuidTD, partition: "p", datacenter: "dc1", service: "web")))
        #expect(!web.sameService(as: SPIFFEID(trustDomain: uuidTD, namespace: "ops", datacenter: "dc1", service: "web")))
        #expect(!web.sameService(as: SPIFFEID(trustDomain: uuidTD, datacenter: "dc2", service: "web")))
        #expect(!web.sameService(as: SPIFFEID(trustDomain: uuidTD, datacenter: "dc1", service: "db")))
        #expect(!web.sameService(as: SPIFFEID(trustDomain: uuidTD, datacenter: "dc1", service: "Web")))
    }

    // MARK: - Rejected forms

    static let invalidCases: [InvalidSPIFFECase] = [
        // Scheme
        .init("https://\(uuidTD)\(svcPath)", .notSPIFFEScheme, "https scheme"),
        .init("spiffe:/\(uuidTD)\(svcPath)", .notSPIFFEScheme, "one slash"),
        .init("spiffe:\(uuidTD)\(svcPath)", .notSPIFFEScheme, "no slashes"),
        .init("spiffe:", .notSPIFFEScheme, "scheme only"),
        .init("spiffe", .notSPIFFEScheme, "bare word"),
        .init("", .notSPIFFEScheme, "empty"),
        .init(" spiffe://\(uuidTD)\(svcPath)", .notSPIFFEScheme, "leading space"),
        .init("spiffes://\(uuidTD)\(svcPath)", .notSPIFFEScheme, "spiffes"),
        .init("urn:spiffe://\(uuidTD)\(svcPath)", .notSPIFFEScheme, "urn prefix"),
        .init("\(uuidTD)\(svcPath)", .notSPIFFEScheme, "no scheme"),

        // Trust domain
        .init("spiffe:///ns/default/dc/dc1/svc/web", .invalidTrustDomain(""), "empty trust domain"),
        .init("spiffe://td.consul:8443\(svcPath)", .invalidTrustDomain("td.consul:8443"), "port"),
        .init("spiffe://user@td.consul\(svcPath)", .invalidTrustDomain("user@td.consul"), "userinfo"),
        .init("spiffe://user:pw@td.consul\(svcPath)", .invalidTrustDomain("user:pw@td.consul"), "userinfo+password"),
        .init("spiffe://td%2Econsul\(svcPath)", .invalidTrustDomain("td%2econsul"), "percent in trust domain"),
        .init("spiffe://td consul\(svcPath)", .invalidTrustDomain("td consul"), "space in trust domain"),
        .init("spiffe://.td.consul\(svcPath)", .invalidTrustDomain(".td.consul"), "leading dot"),
        .init("spiffe://td.consul.\(svcPath)", .invalidTrustDomain("td.consul."), "trailing dot"),
        .init("spiffe://td..consul\(svcPath)", .invalidTrustDomain("td..consul"), "double dot"),
        .init("spiffe://.\(svcPath)", .invalidTrustDomain("."), "only a dot"),
        .init("spiffe://tüd.consul\(svcPath)", .invalidTrustDomain("tüd.consul"), "non-ASCII"),
        // Found by bench/fuzz.sh (SPIFFEIDFuzz): the Kelvin sign lowercases to ASCII "k", so
        // lowercasing before the character check used to accept it as "k.consul".
        .init("spiffe://\u{212A}.consul\(svcPath)", .invalidTrustDomain("\u{212A}.consul"), "Kelvin sign"),
        .init("spiffe://td.\u{212A}onsul\(svcPath)", .invalidTrustDomain("td.\u{212A}onsul"), "Kelvin sign inside"),
        .init("spiffe://[::1]\(svcPath)", .invalidTrustDomain("[::1]"), "IPv6 literal"),
        .init("spiffe://td\\consul\(svcPath)", .invalidTrustDomain("td\\consul"), "backslash"),
        .init("spiffe://" + String(repeating: "a", count: 256) + svcPath,
              .invalidTrustDomain(String(repeating: "a", count: 256)), "256-byte trust domain"),

        // Query and fragment, anywhere after the scheme
        .init("spiffe://\(uuidTD)\(svcPath)?x=1", .queryOrFragment, "query"),
        .init("spiffe://\(uuidTD)\(svcPath)?", .queryOrFragment, "empty query"),
        .init("spiffe://\(uuidTD)\(svcPath)#frag", .queryOrFragment, "fragment"),
        .init("spiffe://\(uuidTD)?x\(svcPath)", .queryOrFragment, "query in authority"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/we#b", .queryOrFragment, "fragment inside last segment"),

        // Path shape
        .init("spiffe://\(uuidTD)", .notAServiceIdentity(""), "CA form, no path"),
        .init("spiffe://\(uuidTD)/", .notAServiceIdentity("/"), "CA form, slash"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1", .notAServiceIdentity("/ns/default/dc/dc1"), "missing svc"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc", .notAServiceIdentity("/ns/default/dc/dc1/svc"),
              "svc without value"),
        .init("spiffe://\(uuidTD)/ns/default/svc/web", .notAServiceIdentity("/ns/default/svc/web"), "missing dc"),
        .init("spiffe://\(uuidTD)/dc/dc1/svc/web", .notAServiceIdentity("/dc/dc1/svc/web"), "missing ns"),
        .init("spiffe://\(uuidTD)\(svcPath)/extra", .notAServiceIdentity("\(svcPath)/extra"), "extra segment"),
        .init("spiffe://\(uuidTD)\(svcPath)/extra/more", .notAServiceIdentity("\(svcPath)/extra/more"),
              "extra pair"),
        .init("spiffe://\(uuidTD)\(svcPath)/", .notAServiceIdentity("\(svcPath)/"), "trailing slash"),
        .init("spiffe://\(uuidTD)/\(svcPath)", .notAServiceIdentity("/\(svcPath)"), "double leading slash"),
        .init("spiffe://\(uuidTD)/dc/x/ns/y/svc/z", .notAServiceIdentity("/dc/x/ns/y/svc/z"), "dc before ns"),
        .init("spiffe://\(uuidTD)/ns/y/svc/z/dc/x", .notAServiceIdentity("/ns/y/svc/z/dc/x"), "svc before dc"),
        .init("spiffe://\(uuidTD)/NS/default/DC/dc1/SVC/web", .notAServiceIdentity("/NS/default/DC/dc1/SVC/web"),
              "uppercase keywords"),
        .init("spiffe://\(uuidTD)/ap/ns/default/dc/dc1/svc/web", .notAServiceIdentity("/ap/ns/default/dc/dc1/svc/web"),
              "ap without value"),
        .init("spiffe://\(uuidTD)/AP/p/ns/default/dc/dc1/svc/web", .notAServiceIdentity("/AP/p/ns/default/dc/dc1/svc/web"),
              "uppercase ap"),
        .init("spiffe://\(uuidTD)/xx/p/ns/default/dc/dc1/svc/web", .notAServiceIdentity("/xx/p/ns/default/dc/dc1/svc/web"),
              "unknown leading keyword"),
        .init("spiffe://\(uuidTD)/ns/default/ap/p/dc/dc1/svc/web", .notAServiceIdentity("/ns/default/ap/p/dc/dc1/svc/web"),
              "ap in the middle"),
        .init("spiffe://\(uuidTD)\(svcPath)/ap/p", .notAServiceIdentity("\(svcPath)/ap/p"), "ap at the end"),
        .init("spiffe://\(uuidTD)/ap/p/ap/p\(svcPath)", .notAServiceIdentity("/ap/p/ap/p\(svcPath)"), "two partitions"),
        .init("spiffe://\(uuidTD)/agent/client/dc/dc1/id/x", .notAServiceIdentity("/agent/client/dc/dc1/id/x"),
              "client agent identity"),
        .init("spiffe://\(uuidTD)/agent/server/dc/dc1", .notAServiceIdentity("/agent/server/dc/dc1"),
              "server agent identity"),
        .init("spiffe://\(uuidTD)/gateway/mesh/dc/dc1", .notAServiceIdentity("/gateway/mesh/dc/dc1"),
              "mesh gateway identity"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/web/ns/x", .notAServiceIdentity("/ns/default/dc/dc1/svc/web/ns/x"),
              "eight segments without ap"),

        // Segment values
        .init("spiffe://\(uuidTD)/ns//dc/dc1/svc/web", .invalidSegment(""), "empty namespace"),
        .init("spiffe://\(uuidTD)/ns/default/dc//svc/web", .invalidSegment(""), "empty datacenter"),
        .init("spiffe://\(uuidTD)/ap//ns/default/dc/dc1/svc/web", .invalidSegment(""), "empty partition"),
        .init("spiffe://\(uuidTD)/ns/./dc/dc1/svc/web", .invalidSegment("."), "dot segment"),
        .init("spiffe://\(uuidTD)/ns/default/dc/../svc/web", .invalidSegment(".."), "dot-dot segment"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/..", .invalidSegment(".."), "dot-dot service"),
        .init("spiffe://\(uuidTD)/ap/./ns/default/dc/dc1/svc/web", .invalidSegment("."), "dot partition"),
        // Encoded dot-segments are dot-segments (RFC 3986 §6.2.2.2); accepting them would make
        // `uri` print a literal "/../" that parse rejects.
        .init("spiffe://\(uuidTD)/ns/%2E%2E/dc/dc1/svc/web", .invalidSegment("%2E%2E"), "encoded dot-dot"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%2e", .invalidSegment("%2e"), "encoded dot"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/.%2E", .invalidSegment(".%2E"), "half-encoded dot-dot"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/my%2Fsvc", .invalidSegment("my%2Fsvc"), "encoded slash"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/my%2fsvc", .invalidSegment("my%2fsvc"), "encoded slash lower"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%", .invalidSegment("%"), "lone percent"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/web%", .invalidSegment("web%"), "trailing percent"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%2", .invalidSegment("%2"), "short escape"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%zz", .invalidSegment("%zz"), "non-hex escape"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%g0", .invalidSegment("%g0"), "non-hex high nibble"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%0g", .invalidSegment("%0g"), "non-hex low nibble"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%ff", .invalidSegment("%ff"), "invalid UTF-8 byte"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/caf%C3", .invalidSegment("caf%C3"), "truncated UTF-8"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%C0%AF", .invalidSegment("%C0%AF"), "overlong UTF-8 slash"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%ED%A0%80", .invalidSegment("%ED%A0%80"), "UTF-8 surrogate"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/a%0ab", .invalidSegment("a%0ab"), "encoded newline"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/a%0Db", .invalidSegment("a%0Db"), "encoded CR"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%00", .invalidSegment("%00"), "encoded NUL"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%1F", .invalidSegment("%1F"), "encoded unit separator"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/%7F", .invalidSegment("%7F"), "encoded DEL"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/my svc", .invalidSegment("my svc"), "raw space"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/a[b]", .invalidSegment("a[b]"), "raw brackets"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/café", .invalidSegment("café"), "raw non-ASCII"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/a\"b", .invalidSegment("a\"b"), "raw quote"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/a\\b", .invalidSegment("a\\b"), "raw backslash"),
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/a\tb", .invalidSegment("a\tb"), "raw tab"),

        // Length, checked before anything else
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/" + String(repeating: "a", count: 2048), .tooLong,
              "over 2048 bytes"),
        .init("https://" + String(repeating: "a", count: 2049), .tooLong, "over 2048 bytes, wrong scheme"),
        // 2048 bytes as UTF-8 even though far fewer Characters.
        .init("spiffe://\(uuidTD)/ns/default/dc/dc1/svc/" + String(repeating: "é", count: 1010), .tooLong,
              "over 2048 UTF-8 bytes"),
    ]

    @Test("rejects malformed identities with the specific error", arguments: invalidCases)
    func rejectsInvalid(_ testCase: InvalidSPIFFECase) {
        #expect(throws: testCase.error) { try SPIFFEID.parse(testCase.uri) }
    }

    @Test("whatever parse accepts, its canonical uri parses to the same value", arguments: [
        "spiffe://td/ns/%2E%2E/dc/dc1/svc/web",
        "spiffe://td/ns/default/dc/dc1/svc/%2e",
        "spiffe://td/ap/%2E/ns/default/dc/dc1/svc/web",
    ])
    func acceptedImpliesCanonicalParses(uri: String) {
        // Input that parse accepts must print as a URI parse accepts again (the printed form is
        // what audit lines and expected-peer comparisons use).
        guard let id = try? SPIFFEID.parse(uri) else { return }
        #expect(throws: Never.self, "\(uri) parsed, but its uri \(id.uri) does not") { try SPIFFEID.parse(id.uri) }
    }

    @Test("an empty authority is refused in some form")
    func emptyAuthorityNoPath() {
        // "spiffe://" is too short to count as the scheme plus anything; either error is acceptable.
        let error = #expect(throws: SPIFFEIDError.self) { try SPIFFEID.parse("spiffe://") }
        #expect(error == .notSPIFFEScheme || error == .invalidTrustDomain(""))
    }

    @Test("length limit is exactly 2048 bytes")
    func lengthBoundary() throws {
        let prefix = "spiffe://td/ns/default/dc/dc1/svc/"
        let exactly = prefix + String(repeating: "s", count: 2048 - prefix.utf8.count)
        #expect(exactly.utf8.count == 2048)
        let id = try SPIFFEID.parse(exactly)
        #expect(id.service.count == 2048 - prefix.utf8.count)
        #expect(throws: SPIFFEIDError.tooLong) { try SPIFFEID.parse(exactly + "s") }
    }

    @Test("trust domain of 255 bytes is the longest accepted")
    func trustDomainLength() throws {
        let td = String(repeating: "a", count: 255)
        #expect(try SPIFFEID.parse("spiffe://\(td)\(svcPath)").trustDomain == td)
        #expect(try SPIFFEID.parseTrustDomainURI("spiffe://\(td)") == td)
    }

    // MARK: - parseTrustDomainURI

    @Test("CA URI forms yield the lowercase trust domain", arguments: [
        ("spiffe://\(uuidTD)", uuidTD),
        ("spiffe://\(uuidTD)/", uuidTD),
        ("SPIFFE://\(uuidTD.uppercased())", uuidTD),
        ("spiffe://Example.ORG/", "example.org"),
    ])
    func trustDomainURI(uri: String, expected: String) throws {
        #expect(try SPIFFEID.parseTrustDomainURI(uri) == expected)
        // The same strings are not service identities.
        #expect(throws: SPIFFEIDError.self) { try SPIFFEID.parse(uri) }
    }

    @Test("CA URI parsing refuses paths and malformed URIs", arguments: [
        InvalidSPIFFECase("spiffe://\(uuidTD)\(svcPath)", .notAServiceIdentity(svcPath), "service path"),
        InvalidSPIFFECase("spiffe://\(uuidTD)/ns", .notAServiceIdentity("/ns"), "one segment"),
        InvalidSPIFFECase("spiffe://\(uuidTD)//", .notAServiceIdentity("//"), "double slash"),
        InvalidSPIFFECase("spiffe://\(uuidTD)/.", .notAServiceIdentity("/."), "dot"),
        InvalidSPIFFECase("https://\(uuidTD)", .notSPIFFEScheme, "https"),
        InvalidSPIFFECase("spiffe:", .notSPIFFEScheme, "scheme only"),
        InvalidSPIFFECase("spiffe://\(uuidTD)?x", .queryOrFragment, "query"),
        InvalidSPIFFECase("spiffe://\(uuidTD)#x", .queryOrFragment, "fragment"),
        InvalidSPIFFECase("spiffe://\(uuidTD):8500", .invalidTrustDomain("\(uuidTD):8500"), "port"),
        InvalidSPIFFECase("spiffe:///", .invalidTrustDomain(""), "empty trust domain"),
        InvalidSPIFFECase("spiffe://a..b", .invalidTrustDomain("a..b"), "double dot"),
        InvalidSPIFFECase("spiffe://\u{212A}.consul", .invalidTrustDomain("\u{212A}.consul"), "Kelvin sign"),
        InvalidSPIFFECase("spiffe://" + String(repeating: "a", count: 2050), .tooLong, "too long"),
    ])
    func trustDomainURIInvalid(_ testCase: InvalidSPIFFECase) {
        #expect(throws: testCase.error) { try SPIFFEID.parseTrustDomainURI(testCase.uri) }
    }

    // MARK: - Error text

    @Test("error descriptions name the offending part", arguments: [
        (SPIFFEIDError.tooLong, "2048"),
        (.notSPIFFEScheme, "spiffe://"),
        (.invalidTrustDomain("bad:td"), "bad:td"),
        (.queryOrFragment, "query"),
        (.notAServiceIdentity("/agent/x"), "/agent/x"),
        (.invalidSegment("%zz"), "%zz"),
    ])
    func errorDescriptions(error: SPIFFEIDError, needle: String) {
        #expect(error.description.contains(needle))
    }
}
