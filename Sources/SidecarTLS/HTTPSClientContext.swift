import COpenSSL
import FoundationEssentials
import Glibc
import SidecarModel

/// How an HTTPS server is trusted and how we authenticate to it: the Consul agent's API, per
/// CONSUL_CACERT / CONSUL_CAPATH / CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY / CONSUL_HTTP_SSL_VERIFY.
package struct HTTPSClientTrust: Sendable, Equatable {
    /// PEM file of trusted CA certificates. Neither this nor `caDirectory`: the system store.
    package var caFile: String?
    /// Every file under this directory (recursively) holds PEM certificates, as go-rootcerts
    /// reads CONSUL_CAPATH; a file without one is an error naming it.
    package var caDirectory: String?
    package var verifyServer: Bool
    package var clientCertificateFile: String?
    package var clientKeyFile: String?

    package init(caFile: String? = nil, caDirectory: String? = nil, verifyServer: Bool = true,
                clientCertificateFile: String? = nil, clientKeyFile: String? = nil) {
        self.caFile = caFile
        self.caDirectory = caDirectory
        self.verifyServer = verifyServer
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
    }
}

/// An SSL_CTX for talking to HTTPS servers on system OpenSSL (the same library the mesh uses).
/// `@unchecked Sendable`: the SSL_CTX is configured in init and only read after.
package final class HTTPSClientContext: @unchecked Sendable {
    // Never mutated after init; SSL_CTX is safe to share between connections.
    let pointer: OpaquePointer
    let verifiesServer: Bool

    package init(_ trust: HTTPSClientTrust) throws {
        OpenSSLErrorQueue.clear()
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw TLSMaterialError("SSL_CTX_new failed: \(OpenSSLErrorQueue.summary(or: "unknown"))")
        }
        pointer = context
        verifiesServer = trust.verifyServer
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw TLSMaterialError("\(what): \(OpenSSLErrorQueue.summary(or: "failed"))") }
        }
        try check(bs_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1, "minimum TLS version")
        try check(SSL_CTX_set_cipher_list(context, TLSContext.tls12CipherList) == 1, "TLS 1.2 cipher list")
        SSL_CTX_set_options(context, bs_SSL_OP_NO_RENEGOTIATION() | bs_SSL_OP_NO_COMPRESSION())
        _ = bs_SSL_CTX_set_max_cert_list(context, 100 * 1024)

        if let caFile = trust.caFile {
            try check(SSL_CTX_load_verify_locations(context, caFile, nil) == 1, "CA file \(caFile)")
        } else if let caDirectory = trust.caDirectory {
            guard let store = SSL_CTX_get_cert_store(context) else { throw TLSMaterialError("no certificate store") }
            for certificate in try Self.certificates(inDirectory: caDirectory) {
                try check(X509_STORE_add_cert(store, certificate.pointer) == 1, "CA certificate from \(caDirectory)")
            }
        } else {
            try check(SSL_CTX_set_default_verify_paths(context) == 1, "system trust store")
        }
        if let certificateFile = trust.clientCertificateFile, let keyFile = trust.clientKeyFile {
            try check(SSL_CTX_use_certificate_chain_file(context, certificateFile) == 1, "client certificate \(certificateFile)")
            try check(SSL_CTX_use_PrivateKey_file(context, keyFile, SSL_FILETYPE_PEM) == 1, "client key \(keyFile)")
            try check(SSL_CTX_check_private_key(context) == 1, "client key \(keyFile) does not match \(certificateFile)")
        }
        if trust.verifyServer {
            // Chain, dates and the host name (set per connection) are OpenSSL's checks; the
            // callback only records why a chain failed, for the error message.
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, httpsVerifyCallback)
            SSL_CTX_set_verify_depth(context, 8)
        } else {
            SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
        }
    }

    deinit { SSL_CTX_free(pointer) }

    static func certificates(inDirectory path: String) throws -> [Certificate] {
        guard let names = try? FileManager.default.subpathsOfDirectory(atPath: path) else {
            throw TLSMaterialError("\(path): not a readable directory")
        }
        var certificates: [Certificate] = []
        for name in names.sorted() {
            let file = FilePath.join(path, name)
            var status = stat()
            guard stat(file, &status) == 0, status.st_mode & S_IFMT != S_IFDIR else { continue }
            guard let bytes = FileManager.default.contents(atPath: file),
                  let found = try? Certificate.parsePEMBundle(Array(bytes), source: file) else {
                throw TLSMaterialError("no PEM certificate in \(file)")
            }
            certificates += found
        }
        guard !certificates.isEmpty else { throw TLSMaterialError("\(path): no certificates") }
        return certificates
    }
}

/// Web PKI: keep OpenSSL's verdict, and remember why a certificate failed.
private let httpsVerifyCallback: @convention(c) (Int32, OpaquePointer?) -> Int32 = { preverified, store in
    guard preverified == 0 else { return 1 }
    guard let store,
          let ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()),
          let stateRaw = bs_SSL_get_app_data(OpaquePointer(ssl))
    else { return 0 }
    let state = Unmanaged<PeerVerificationState>.fromOpaque(stateRaw).takeUnretainedValue()
    let code = X509_STORE_CTX_get_error(store)
    let depth = X509_STORE_CTX_get_error_depth(store)
    state.failure = .chain("\(String(cString: X509_verify_cert_error_string(Int(code)))) at depth \(depth)")
    return 0
}
