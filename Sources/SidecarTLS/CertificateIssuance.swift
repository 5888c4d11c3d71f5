import COpenSSL
import FoundationEssentials

/// What one certificate signed by the dev agent's CA says. Only the two shapes Consul's built-in
/// CA makes: a CA root (self-signed or cross-signed) and a service leaf.
package struct CertificateTemplate {
    package enum Kind: Sendable {
        /// basicConstraints CA:TRUE, keyUsage digitalSignature/keyCertSign/cRLSign.
        case certificateAuthority
        /// CA:FALSE, keyUsage for TLS either way, extendedKeyUsage serverAuth + clientAuth.
        case serviceLeaf
    }

    package enum Subject {
        case commonName(String)
        /// The subject name of an existing certificate, byte for byte (cross-signing).
        case sameAs(Certificate)
    }

    package var kind: Kind
    /// The serial number as a big-endian unsigned magnitude: non-zero, at most 20 bytes
    /// (RFC 5280 4.1.2.2). DER's sign byte is added by OpenSSL where the top bit is set.
    package var serial: [UInt8]
    package var subject: Subject
    package var notBefore: Date
    package var notAfter: Date
    package var uriSAN: String

    package init(kind: Kind, serial: [UInt8], subject: Subject, notBefore: Date, notAfter: Date, uriSAN: String) {
        self.kind = kind
        self.serial = serial
        self.subject = subject
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.uriSAN = uriSAN
    }
}

extension Certificate {
    /// Signs `template` (ECDSA or RSA with SHA-256) for `subjectKey`'s public half.
    /// `issuer` nil: self-signed with `subjectKey`.
    package static func issue(_ template: CertificateTemplate, subjectKey: PrivateKey,
                             issuer: (certificate: Certificate, key: PrivateKey)?) throws -> Certificate {
        OpenSSLErrorQueue.clear()
        guard let x509 = X509_new() else { throw TLSMaterialError("X509_new failed") }
        let certificate = Certificate(taking: x509)
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw TLSMaterialError("certificate \(what): \(OpenSSLErrorQueue.summary(or: "failed"))") }
        }
        try check(X509_set_version(x509, Int(X509_VERSION_3)) == 1, "version")
        let magnitude = template.serial.drop { $0 == 0 }
        guard !magnitude.isEmpty, magnitude.count <= 20 else {
            throw TLSMaterialError("certificate serial must be non-zero and at most 20 bytes")
        }
        let serial = BN_bin2bn(Array(magnitude), Int32(magnitude.count), nil)
        defer { BN_free(serial) }
        try check(serial != nil && BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x509)) != nil, "serial")
        try check(ASN1_TIME_set(X509_getm_notBefore(x509), time_t(template.notBefore.timeIntervalSince1970)) != nil, "notBefore")
        try check(ASN1_TIME_set(X509_getm_notAfter(x509), time_t(template.notAfter.timeIntervalSince1970)) != nil, "notAfter")
        switch template.subject {
        case .commonName(let name):
            guard let subject = X509_NAME_new() else { throw TLSMaterialError("X509_NAME_new failed") }
            defer { X509_NAME_free(subject) }
            try check(X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, name, -1, -1, 0) == 1, "common name")
            try check(X509_set_subject_name(x509, subject) == 1, "subject")
        case .sameAs(let other):
            try check(X509_set_subject_name(x509, X509_get_subject_name(other.pointer)) == 1, "subject")
        }
        let issuerName = issuer.map { X509_get_subject_name($0.certificate.pointer) } ?? X509_get_subject_name(x509)
        try check(X509_set_issuer_name(x509, issuerName) == 1, "issuer")
        try check(X509_set_pubkey(x509, subjectKey.pointer) == 1, "public key")

        switch template.kind {
        case .certificateAuthority:
            try certificate.addExtension(NID_basic_constraints, "critical,CA:TRUE")
            try certificate.addExtension(NID_key_usage, "critical,digitalSignature,keyCertSign,cRLSign")
        case .serviceLeaf:
            try certificate.addExtension(NID_basic_constraints, "critical,CA:FALSE")
            try certificate.addExtension(NID_key_usage, "critical,digitalSignature,keyEncipherment,dataEncipherment,keyAgreement")
            try certificate.addExtension(NID_ext_key_usage, "serverAuth,clientAuth")
        }
        try certificate.addKeyIdentifiers(subject: subjectKey.keyIdentifier,
                                          authority: (issuer?.key ?? subjectKey).keyIdentifier)
        try certificate.addURISAN(template.uriSAN)
        try check(X509_sign(x509, (issuer?.key ?? subjectKey).pointer, EVP_sha256()) > 0, "signature")
        return certificate
    }

    /// Extensions whose values are fixed text (never caller input: the config parser splits on commas).
    private func addExtension(_ nid: Int32, _ value: String) throws {
        guard let ext = X509V3_EXT_conf_nid(nil, nil, nid, value) else {
            throw TLSMaterialError("certificate extension \(value): \(OpenSSLErrorQueue.summary(or: "failed"))")
        }
        defer { X509_EXTENSION_free(ext) }
        guard X509_add_ext(pointer, ext, -1) == 1 else { throw TLSMaterialError("certificate extension \(value)") }
    }

    private func addKeyIdentifiers(subject: [UInt8], authority: [UInt8]) throws {
        guard let subjectID = ASN1_OCTET_STRING_new() else { throw TLSMaterialError("subject key identifier") }
        defer { ASN1_OCTET_STRING_free(subjectID) }
        guard ASN1_OCTET_STRING_set(subjectID, subject, Int32(subject.count)) == 1,
              X509_add1_ext_i2d(pointer, NID_subject_key_identifier, subjectID, 0, UInt(X509V3_ADD_DEFAULT)) == 1 else {
            throw TLSMaterialError("subject key identifier: \(OpenSSLErrorQueue.summary(or: "failed"))")
        }
        guard let authorityID = AUTHORITY_KEYID_new(), let keyID = ASN1_OCTET_STRING_new() else {
            throw TLSMaterialError("authority key identifier")
        }
        authorityID.pointee.keyid = keyID // freed with authorityID
        defer { AUTHORITY_KEYID_free(authorityID) }
        guard ASN1_OCTET_STRING_set(keyID, authority, Int32(authority.count)) == 1,
              X509_add1_ext_i2d(pointer, NID_authority_key_identifier, authorityID, 0, UInt(X509V3_ADD_DEFAULT)) == 1 else {
            throw TLSMaterialError("authority key identifier: \(OpenSSLErrorQueue.summary(or: "failed"))")
        }
    }

    private func addURISAN(_ uri: String) throws {
        guard let names = bs_general_names_new() else { throw TLSMaterialError("subjectAltName") }
        defer { GENERAL_NAMES_free(names) }
        guard let name = GENERAL_NAME_new(), let text = ASN1_IA5STRING_new() else { throw TLSMaterialError("subjectAltName") }
        let bytes = Array(uri.utf8)
        guard ASN1_STRING_set(text, bytes, Int32(bytes.count)) == 1 else {
            GENERAL_NAME_free(name)
            ASN1_IA5STRING_free(text)
            throw TLSMaterialError("subjectAltName")
        }
        GENERAL_NAME_set0_value(name, GEN_URI, UnsafeMutableRawPointer(text))
        guard bs_general_names_push(names, name) > 0 else {
            GENERAL_NAME_free(name)
            throw TLSMaterialError("subjectAltName")
        }
        guard X509_add1_ext_i2d(pointer, NID_subject_alt_name, UnsafeMutableRawPointer(names), 0, UInt(X509V3_ADD_DEFAULT)) == 1 else {
            throw TLSMaterialError("subjectAltName: \(OpenSSLErrorQueue.summary(or: "failed"))")
        }
    }

    /// The DER encoding.
    var derEncoded: [UInt8] {
        MemoryBIO.bytes { i2d_X509_bio($0, pointer) == 1 } ?? []
    }

    /// SHA-1 of the DER certificate: how Consul names its roots.
    package var sha1Fingerprint: [UInt8] { Digest.sha1(derEncoded) }

    /// The subject key identifier extension's value, or nil without one.
    var subjectKeyIdentifier: [UInt8]? {
        guard let keyID = X509_get0_subject_key_id(pointer) else { return nil }
        return Array(UnsafeBufferPointer(start: ASN1_STRING_get0_data(keyID), count: Int(ASN1_STRING_length(keyID))))
    }

    /// The serial number's big-endian bytes.
    package var serialBytes: [UInt8] {
        guard let serial = X509_get0_serialNumber(pointer), let bignum = ASN1_INTEGER_to_BN(serial, nil) else { return [] }
        defer { BN_free(bignum) }
        var bytes = [UInt8](repeating: 0, count: Int((BN_num_bits(bignum) + 7) / 8))
        BN_bn2bin(bignum, &bytes)
        return bytes
    }
}
