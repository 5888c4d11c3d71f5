import COpenSSL
import FoundationEssentials

/// An immutable X.509 certificate owned by Swift (wraps `X509*`).
/// `@unchecked Sendable`: an X509 that is never modified after init.
package final class Certificate: @unchecked Sendable, CustomStringConvertible {
    // Never mutated after init, so sharing across event loops is safe.
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) { self.pointer = pointer }

    /// Takes an extra reference: for certificates borrowed from OpenSSL structures.
    init(retaining pointer: OpaquePointer) {
        X509_up_ref(pointer)
        self.pointer = pointer
    }

    deinit { X509_free(pointer) }

    /// Every certificate in a PEM bundle, in order. Rejects empty bundles and trailing garbage
    /// that looks like a broken certificate.
    static func parsePEMBundle(_ pem: [UInt8], source: String) throws -> [Certificate] {
        OpenSSLErrorQueue.clear()
        let read: [Certificate]? = MemoryBIO.reading(pem) { bio in
            var result: [Certificate] = []
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                result.append(Certificate(taking: x509))
            }
            return result
        }
        guard let certificates = read else { throw TLSMaterialError("\(source): cannot allocate a memory BIO") }
        // Reading stops with "no start line" at the end of the data: that is the normal end.
        let leftover = OpenSSLErrorQueue.drain().filter { !$0.contains("no start line") }
        if !leftover.isEmpty {
            throw TLSMaterialError("\(source): malformed PEM certificate (\(leftover.joined(separator: "; ")))")
        }
        guard !certificates.isEmpty else { throw TLSMaterialError("\(source): no PEM certificate found") }
        return certificates
    }

    /// Serial number as lowercase colon-separated hex, the way Consul prints SerialNumber.
    package var serialNumber: String {
        guard let serial = X509_get0_serialNumber(pointer), let bignum = ASN1_INTEGER_to_BN(serial, nil) else {
            return ""
        }
        defer { BN_free(bignum) }
        guard let hex = BN_bn2hex(bignum) else { return "" }
        defer { bs_OPENSSL_free(hex) }
        var digits = String(cString: hex).lowercased()
        if digits.count % 2 == 1 { digits = "0" + digits }
        var pairs: [Substring] = []
        var index = digits.startIndex
        while index < digits.endIndex {
            let next = digits.index(index, offsetBy: 2)
            pairs.append(digits[index..<next])
            index = next
        }
        return pairs.joined(separator: ":")
    }

    package var notBefore: Date { Self.date(X509_get0_notBefore(pointer)) }
    package var notAfter: Date { Self.date(X509_get0_notAfter(pointer)) }

    private static func date(_ time: UnsafePointer<ASN1_TIME>?) -> Date {
        var parts = tm()
        guard let time, ASN1_TIME_to_tm(time, &parts) == 1 else { return .distantPast }
        return Date(timeIntervalSince1970: TimeInterval(timegm(&parts)))
    }

    /// Every URI subject alternative name, exactly as encoded.
    package var uriSANs: [String] {
        guard let names = bs_x509_subject_alt_names(pointer) else { return [] }
        defer { bs_general_names_free(names) }
        var uris: [String] = []
        for index in 0..<bs_general_names_count(names) {
            var length: Int32 = 0
            guard let bytes = bs_general_name_uri(names, index, &length) else { continue }
            uris.append(String(decoding: UnsafeBufferPointer(start: bytes, count: Int(length)), as: UTF8.self))
        }
        return uris
    }

    /// What peer verification needs to know about a leaf, extracted once.
    var leafFacts: LeafCertificateFacts {
        let flags = X509_get_extension_flags(pointer)
        let hasEKU = flags & UInt32(EXFLAG_XKUSAGE) != 0
        let eku = X509_get_extended_key_usage(pointer)
        return LeafCertificateFacts(
            uriSANs: uriSANs,
            extendedKeyUsage: hasEKU
                ? .init(clientAuth: eku & UInt32(XKU_SSL_CLIENT) != 0, serverAuth: eku & UInt32(XKU_SSL_SERVER) != 0)
                : nil,
            // basicConstraints CA:TRUE itself, not X509_check_ca: that one answers "not a CA"
            // when keyUsage lacks keyCertSign, which would let a CA:TRUE leaf through.
            isCA: flags & UInt32(EXFLAG_CA) != 0
        )
    }

    package var pemEncoded: String {
        MemoryBIO.text { PEM_write_bio_X509($0, pointer) == 1 } ?? ""
    }

    package var description: String {
        "Certificate(serial: \(serialNumber), uris: \(uriSANs), notAfter: \(notAfter))"
    }
}

/// A private key owned by Swift (wraps `EVP_PKEY*`).
/// `@unchecked Sendable`: an EVP_PKEY that is never modified after init.
package final class PrivateKey: @unchecked Sendable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }

    /// Accepts PKCS#8 ("PRIVATE KEY") and SEC1 ("EC PRIVATE KEY", as Consul sends) PEM.
    package static func parsePEM(_ pem: [UInt8], source: String) throws -> PrivateKey {
        OpenSSLErrorQueue.clear()
        let key = MemoryBIO.reading(pem) { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
        guard let key else {
            throw TLSMaterialError("\(source): no readable PEM private key (\(OpenSSLErrorQueue.summary(or: "empty")))")
        }
        return PrivateKey(taking: key)
    }

    /// True when `certificate` carries this key's public half.
    package func matches(_ certificate: Certificate) -> Bool {
        guard let publicKey = X509_get0_pubkey(certificate.pointer) else { return false }
        return EVP_PKEY_eq(publicKey, pointer) == 1
    }
}
