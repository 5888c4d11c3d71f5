import Crypto
import Foundation
import X509

/// Pure certificate construction for the dev CA: roots, cross-signed roots and leaves, all
/// EC P-256 / ECDSA-SHA256, shaped like Consul's built-in CA.
enum CertificateMinting {
    struct Root {
        var certificate: Certificate
        var key: P256.Signing.PrivateKey
        var serial: UInt64
    }

    static let clockSkew: TimeInterval = 60

    /// Random positive serials below 2^63, exact in JSON numbers and Consul's `Uint64()`.
    static func randomSerial() -> UInt64 { UInt64.random(in: 1...(UInt64(Int64.max))) }

    static func subjectKeyID(of key: P256.Signing.PublicKey) -> [UInt8] {
        // RFC 5280 method 1: SHA-1 of the subjectPublicKey bits (the uncompressed point).
        Array(Insecure.SHA1.hash(data: key.x963Representation))
    }

    static func makeRoot(trustDomain: String, key: P256.Signing.PrivateKey = .init(), now: Date = Date()) throws -> Root {
        let serial = randomSerial()
        let name = try DistinguishedName { CommonName("Consul CA \(serial)") }
        let keyID = subjectKeyID(of: key.publicKey)
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(serial),
            publicKey: .init(key.publicKey),
            notValidBefore: now - clockSkew,
            notValidAfter: now + 10 * 365 * 86400,
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try rootExtensions(trustDomain: trustDomain, keyID: keyID, authorityKeyID: keyID),
            issuerPrivateKey: .init(key)
        )
        return Root(certificate: certificate, key: key, serial: serial)
    }

    private static func rootExtensions(trustDomain: String, keyID: [UInt8], authorityKeyID: [UInt8]) throws -> Certificate.Extensions {
        try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
            Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
            SubjectKeyIdentifier(keyIdentifier: keyID[...])
            AuthorityKeyIdentifier(keyIdentifier: authorityKeyID[...])
            SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://\(trustDomain)")])
        }
    }

    /// The new root's subject and key, issued and signed by the old root, valid no longer than
    /// the old root: leaves of the new root then chain to the old one for peers that only
    /// trust it yet.
    static func crossSign(_ newRoot: Root, by oldRoot: Root, trustDomain: String, now: Date = Date()) throws -> Certificate {
        let oldKeyID = subjectKeyID(of: oldRoot.key.publicKey)
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(randomSerial()),
            publicKey: .init(newRoot.key.publicKey),
            notValidBefore: max(now - clockSkew, oldRoot.certificate.notValidBefore),
            notValidAfter: min(newRoot.certificate.notValidAfter, oldRoot.certificate.notValidAfter),
            issuer: oldRoot.certificate.subject,
            subject: newRoot.certificate.subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try rootExtensions(trustDomain: trustDomain, keyID: subjectKeyID(of: newRoot.key.publicKey),
                                           authorityKeyID: oldKeyID),
            issuerPrivateKey: .init(oldRoot.key)
        )
    }

    struct Leaf {
        var certificate: Certificate
        var key: P256.Signing.PrivateKey
        var serialBytes: [UInt8]
    }

    static func makeLeaf(serviceURI: String, commonName: String, ttl: TimeInterval, root: Root,
                         now: Date = Date()) throws -> Leaf {
        let key = P256.Signing.PrivateKey()
        // 8 random bytes with the top bit clear: positive, "64-bit-ish" like Consul's serials.
        var serialBytes = (0..<8).map { _ in UInt8.random(in: 0...255) }
        serialBytes[0] = serialBytes[0] & 0x7f | 0x01
        let rootKeyID = subjectKeyID(of: root.key.publicKey)
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true, dataEncipherment: true, keyAgreement: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            SubjectKeyIdentifier(keyIdentifier: subjectKeyID(of: key.publicKey)[...])
            AuthorityKeyIdentifier(keyIdentifier: rootKeyID[...])
            SubjectAlternativeNames([.uniformResourceIdentifier(serviceURI)])
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(bytes: serialBytes),
            publicKey: .init(key.publicKey),
            notValidBefore: now - clockSkew,
            notValidAfter: now + ttl,
            issuer: root.certificate.subject,
            subject: try DistinguishedName { CommonName(commonName) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions,
            issuerPrivateKey: .init(root.key)
        )
        return Leaf(certificate: certificate, key: key, serialBytes: serialBytes)
    }

    static func pem(_ certificate: Certificate) throws -> String {
        try certificate.serializeAsPEM().pemString + "\n"
    }

    /// SHA-1 of the DER certificate in colon-hex: how Consul names roots.
    static func fingerprint(_ certificate: Certificate) throws -> String {
        let der = try certificate.serializeAsPEM().derBytes
        return Format.colonHex(Insecure.SHA1.hash(data: der))
    }

    /// SEC1 `EC PRIVATE KEY` PEM, what Consul hands out (swift-crypto only writes PKCS#8).
    /// ECPrivateKey ::= SEQUENCE { 1, OCTET STRING d, [0] prime256v1, [1] BIT STRING point }.
    static func sec1PEM(_ key: P256.Signing.PrivateKey) -> String {
        let curveOID: [UInt8] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        let point = Array(key.publicKey.x963Representation)  // 65 bytes
        var body: [UInt8] = [0x02, 0x01, 0x01, 0x04, 0x20] + Array(key.rawRepresentation)
        body += [0xa0, UInt8(curveOID.count)] + curveOID
        body += [0xa1, UInt8(point.count + 3), 0x03, UInt8(point.count + 1), 0x00] + point
        let der: [UInt8] = [0x30, UInt8(body.count)] + body
        let lines = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return "-----BEGIN EC PRIVATE KEY-----\n\(lines)\n-----END EC PRIVATE KEY-----\n"
    }
}
