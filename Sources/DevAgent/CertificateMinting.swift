import FoundationEssentials
import SidecarTLS

/// Certificate construction for the dev CA: roots, cross-signed roots and leaves, all
/// EC P-256 / ECDSA-SHA256, shaped like Consul's built-in CA. The signing is OpenSSL's.
enum CertificateMinting {
    struct Root: Sendable {
        var certificate: Certificate
        var key: PrivateKey
        var serial: UInt64
    }

    static let clockSkew: TimeInterval = 60

    /// Random positive serials below 2^63, exact in JSON numbers and Consul's `Uint64()`.
    static func randomSerial() -> UInt64 { UInt64.random(in: 1...(UInt64(Int64.max))) }

    static func bytes(of serial: UInt64) -> [UInt8] {
        let bytes = withUnsafeBytes(of: serial.bigEndian, Array.init)
        return Array(bytes.drop { $0 == 0 })
    }

    static func makeRoot(trustDomain: String, key: PrivateKey? = nil, now: Date = Date()) throws -> Root {
        let key = try key ?? PrivateKey.generate(.ecP256)
        let serial = randomSerial()
        let template = CertificateTemplate(kind: .certificateAuthority, serial: bytes(of: serial),
                                           subject: .commonName("Consul CA \(serial)"), notBefore: now - clockSkew,
                                           notAfter: now + 10 * 365 * 86400, uriSAN: "spiffe://\(trustDomain)")
        return Root(certificate: try Certificate.issue(template, subjectKey: key, issuer: nil), key: key, serial: serial)
    }

    /// The new root's subject and key, issued and signed by the old root, valid no longer than
    /// the old root: leaves of the new root then chain to the old one for peers that only
    /// trust it yet.
    static func crossSign(_ newRoot: Root, by oldRoot: Root, trustDomain: String, now: Date = Date()) throws -> Certificate {
        let template = CertificateTemplate(
            kind: .certificateAuthority, serial: bytes(of: randomSerial()), subject: .sameAs(newRoot.certificate),
            notBefore: max(now - clockSkew, oldRoot.certificate.notBefore),
            notAfter: min(newRoot.certificate.notAfter, oldRoot.certificate.notAfter),
            uriSAN: "spiffe://\(trustDomain)")
        return try Certificate.issue(template, subjectKey: newRoot.key, issuer: (oldRoot.certificate, oldRoot.key))
    }

    struct Leaf {
        var certificate: Certificate
        var key: PrivateKey
        var serialBytes: [UInt8]
    }

    static func makeLeaf(serviceURI: String, commonName: String, ttl: TimeInterval, root: Root,
                         now: Date = Date()) throws -> Leaf {
        let key = try PrivateKey.generate(.ecP256)
        // 8 random bytes with the top bit clear: positive, "64-bit-ish" like Consul's serials.
        var serialBytes = (0..<8).map { _ in UInt8.random(in: 0...255) }
        serialBytes[0] = serialBytes[0] & 0x7f | 0x01
        // X.509 times are whole seconds: round NotAfter up, or a 3 s test TTL loses up to a third.
        let notAfter = Date(timeIntervalSince1970: (now + ttl).timeIntervalSince1970.rounded(.up))
        let template = CertificateTemplate(kind: .serviceLeaf, serial: serialBytes, subject: .commonName(commonName),
                                           notBefore: now - clockSkew, notAfter: notAfter, uriSAN: serviceURI)
        let certificate = try Certificate.issue(template, subjectKey: key, issuer: (root.certificate, root.key))
        return Leaf(certificate: certificate, key: key, serialBytes: serialBytes)
    }

    static func pem(_ certificate: Certificate) -> String {
        certificate.pemEncoded
    }

    /// SHA-1 of the DER certificate in colon-hex: how Consul names roots.
    static func fingerprint(_ certificate: Certificate) -> String {
        Format.colonHex(certificate.sha1Fingerprint)
    }
}
