import COpenSSL
import FoundationEssentials

/// Collects what an OpenSSL `*_write_bio_*` call writes into a memory BIO.
enum MemoryBIO {
    static func bytes(_ write: (OpaquePointer) -> Bool) -> [UInt8]? {
        guard let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        guard write(bio) else { return nil }
        var data: UnsafeMutablePointer<CChar>?
        let length = bs_BIO_get_mem_data(bio, &data)
        guard let data, length > 0 else { return nil }
        return Array(UnsafeRawBufferPointer(start: data, count: length))
    }

    static func text(_ write: (OpaquePointer) -> Bool) -> String? {
        bytes(write).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Runs `read` on a read-only BIO over `bytes`.
    static func reading<T>(_ bytes: [UInt8], _ read: (OpaquePointer) -> T?) -> T? {
        bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return read(bio)
        }
    }
}

/// One-shot digests over OpenSSL.
package enum Digest {
    package static func sha256<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        compute(EVP_sha256(), Array(bytes))
    }

    /// Only where a format demands it (certificate fingerprints, key identifiers); never for security.
    static func sha1<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        compute(EVP_sha1(), Array(bytes))
    }

    private static func compute(_ type: OpaquePointer?, _ bytes: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = bytes.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &output, &length, type, nil) }
        return Array(output.prefix(Int(length)))
    }
}

/// The key types the binary creates or accepts for signatures.
package enum KeyAlgorithm: Sendable, Equatable {
    case ecP256
    case rsa(bits: Int)
}

extension PrivateKey {
    /// A fresh key from OpenSSL's default random generator.
    package static func generate(_ algorithm: KeyAlgorithm) throws -> PrivateKey {
        OpenSSLErrorQueue.clear()
        let type = algorithm == .ecP256 ? "EC" : "RSA"
        guard let context = EVP_PKEY_CTX_new_from_name(nil, type, nil) else {
            throw TLSMaterialError("key generation: no \(type) implementation")
        }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_keygen_init(context) == 1 else { throw TLSMaterialError("key generation: \(OpenSSLErrorQueue.summary(or: "init"))") }
        switch algorithm {
        case .ecP256:
            guard EVP_PKEY_CTX_set_group_name(context, "P-256") == 1 else { throw TLSMaterialError("key generation: P-256") }
        case .rsa(let bits):
            guard EVP_PKEY_CTX_set_rsa_keygen_bits(context, Int32(bits)) == 1 else { throw TLSMaterialError("key generation: RSA bits") }
        }
        var key: OpaquePointer?
        guard EVP_PKEY_generate(context, &key) == 1, let key else {
            throw TLSMaterialError("key generation: \(OpenSSLErrorQueue.summary(or: "failed"))")
        }
        return PrivateKey(taking: key)
    }

    /// What kind of key this is; nil for anything but EC P-256 and RSA.
    package var algorithm: KeyAlgorithm? { KeyAlgorithm(of: pointer) }

    /// The traditional PEM form: `EC PRIVATE KEY` (SEC1) for EC keys, as Consul hands them out.
    package var traditionalPEM: String {
        MemoryBIO.text { PEM_write_bio_PrivateKey_traditional($0, pointer, nil, nil, 0, nil, nil) == 1 } ?? ""
    }

    /// The public half as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    package var publicKeyPEM: String {
        MemoryBIO.text { PEM_write_bio_PUBKEY($0, pointer) == 1 } ?? ""
    }

    /// The same key material (public and private halves).
    package func sameKey(as other: PrivateKey) -> Bool { EVP_PKEY_eq(pointer, other.pointer) == 1 }

    /// The subjectPublicKey BIT STRING contents: the encoded point (EC) or RSAPublicKey (RSA).
    var publicKeyBits: [UInt8] {
        var publicKey: OpaquePointer?
        guard X509_PUBKEY_set(&publicKey, pointer) == 1, let publicKey else { return [] }
        defer { X509_PUBKEY_free(publicKey) }
        var data: UnsafePointer<UInt8>?
        var length: Int32 = 0
        guard X509_PUBKEY_get0_param(nil, &data, &length, nil, publicKey) == 1, let data else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: Int(length)))
    }

    /// RFC 5280 method 1 key identifier: SHA-1 of the subjectPublicKey bits.
    package var keyIdentifier: [UInt8] { Digest.sha1(publicKeyBits) }

    /// A SHA-256 signature over `message`: DER ECDSA for EC keys, PKCS#1 v1.5 for RSA.
    package func signSHA256(_ message: [UInt8]) throws -> [UInt8] {
        OpenSSLErrorQueue.clear()
        guard let context = EVP_MD_CTX_new() else { throw TLSMaterialError("signing: no context") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, pointer) == 1 else {
            throw TLSMaterialError("signing: \(OpenSSLErrorQueue.summary(or: "init"))")
        }
        var length = 0
        guard EVP_DigestSign(context, nil, &length, message, message.count) == 1 else {
            throw TLSMaterialError("signing: \(OpenSSLErrorQueue.summary(or: "size"))")
        }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(context, &signature, &length, message, message.count) == 1 else {
            throw TLSMaterialError("signing: \(OpenSSLErrorQueue.summary(or: "failed"))")
        }
        return Array(signature.prefix(length))
    }
}

/// A public key that verifies signatures (JWT validation keys).
/// `@unchecked Sendable`: an EVP_PKEY that is never modified after init.
package final class PublicKey: @unchecked Sendable {
    let pointer: OpaquePointer
    package let algorithm: KeyAlgorithm

    private init(taking pointer: OpaquePointer, algorithm: KeyAlgorithm) {
        self.pointer = pointer
        self.algorithm = algorithm
    }

    deinit { EVP_PKEY_free(pointer) }

    /// A PEM `PUBLIC KEY`: EC P-256, or RSA of at least 2048 bits. Anything else is refused.
    package static func parsePEM(_ pem: String) throws -> PublicKey {
        OpenSSLErrorQueue.clear()
        guard let key = MemoryBIO.reading(Array(pem.utf8), { PEM_read_bio_PUBKEY($0, nil, nil, nil) }) else {
            throw TLSMaterialError("not a PEM public key (\(OpenSSLErrorQueue.summary(or: "unreadable")))")
        }
        guard let algorithm = KeyAlgorithm(of: key) else {
            EVP_PKEY_free(key)
            throw TLSMaterialError("only EC P-256 and RSA public keys are accepted")
        }
        if case .rsa(let bits) = algorithm, bits < 2048 {
            EVP_PKEY_free(key)
            throw TLSMaterialError("RSA public key of \(bits) bits; at least 2048 are required")
        }
        return PublicKey(taking: key, algorithm: algorithm)
    }

    /// Checks a SHA-256 signature made by `PrivateKey.signSHA256`.
    package func verifiesSHA256(_ signature: [UInt8], over message: [UInt8]) -> Bool {
        OpenSSLErrorQueue.clear()
        defer { OpenSSLErrorQueue.clear() }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, pointer) == 1 else { return false }
        return EVP_DigestVerify(context, signature, signature.count, message, message.count) == 1
    }
}

extension KeyAlgorithm {
    init?(of key: OpaquePointer) {
        switch EVP_PKEY_get_base_id(key) {
        case EVP_PKEY_RSA:
            self = .rsa(bits: Int(EVP_PKEY_get_bits(key)))
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            guard EVP_PKEY_get_group_name(key, &name, name.count, &length) == 1,
                  String(cString: name) == "prime256v1" || String(cString: name) == "P-256" else { return nil }
            self = .ecP256
        default:
            return nil
        }
    }
}

/// ECDSA signatures as JWS wants them (RFC 7518 3.4): fixed-width r||s instead of DER.
package enum ECDSASignatureFormat {
    package static func raw(fromDER der: [UInt8], width: Int = 32) -> [UInt8]? {
        var cursor: UnsafePointer<UInt8>? = nil
        return der.withUnsafeBufferPointer { buffer -> [UInt8]? in
            cursor = buffer.baseAddress
            guard let signature = d2i_ECDSA_SIG(nil, &cursor, buffer.count) else { return nil }
            defer { ECDSA_SIG_free(signature) }
            var output = [UInt8](repeating: 0, count: 2 * width)
            guard BN_bn2binpad(ECDSA_SIG_get0_r(signature), &output, Int32(width)) == Int32(width),
                  output.withUnsafeMutableBufferPointer({
                      BN_bn2binpad(ECDSA_SIG_get0_s(signature), $0.baseAddress! + width, Int32(width))
                  }) == Int32(width) else { return nil }
            return output
        }
    }

    package static func der(fromRaw raw: [UInt8]) -> [UInt8]? {
        guard raw.count % 2 == 0, !raw.isEmpty, let signature = ECDSA_SIG_new() else { return nil }
        defer { ECDSA_SIG_free(signature) }
        let width = raw.count / 2
        let r = BN_bin2bn(raw, Int32(width), nil)
        let s = raw.withUnsafeBufferPointer { BN_bin2bn($0.baseAddress! + width, Int32(width), nil) }
        guard let r, let s, ECDSA_SIG_set0(signature, r, s) == 1 else {
            BN_free(r)
            BN_free(s)
            return nil
        }
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_ECDSA_SIG(signature, &out)
        guard length > 0, let out else { return nil }
        defer { bs_OPENSSL_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }
}
