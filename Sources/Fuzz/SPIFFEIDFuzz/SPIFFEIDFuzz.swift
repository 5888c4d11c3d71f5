import FuzzSupport
import SidecarModel

/// SPIFFE ID parsing: only `SPIFFEIDError` may come out, and an accepted ID's canonical URI
/// parses back to the same ID and is its own canonical form.
@_cdecl("LLVMFuzzerTestOneInput")
func spiffeIDFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        let id = try SPIFFEID.parse(text)
        let uri = id.uri
        let reparsed = try? SPIFFEID.parse(uri)
        invariant(reparsed == id, "\(uri) re-parses to \(String(describing: reparsed)), not \(id)")
        invariant(reparsed?.uri == uri, "\(uri) is not its own canonical form")
        invariant(reparsed?.sameService(as: id) == true, "sameService disagrees with ==")
        // Every accepted character is a pchar, a percent escape or a trust-domain character:
        // all ASCII. Anything else got through by some Unicode case mapping or normalization.
        invariant(text.utf8.allSatisfy { $0 < 0x80 }, "accepted non-ASCII input \(text.debugDescription)")
    } catch {
        invariant(error is SPIFFEIDError, "unexpected error \(error)")
    }
    if let trustDomain = try? SPIFFEID.parseTrustDomainURI(text) {
        invariant((try? SPIFFEID.parseTrustDomainURI("spiffe://" + trustDomain)) == trustDomain,
                  "trust domain \(trustDomain) does not round-trip")
        invariant(text.utf8.allSatisfy { $0 < 0x80 }, "accepted non-ASCII trust domain URI \(text.debugDescription)")
    }
    return 0
}

@main enum SPIFFEIDFuzzMain {
    static func main() { FuzzDriver.main(spiffeIDFuzz) }
}
