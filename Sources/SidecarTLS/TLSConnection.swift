import COpenSSL
import FoundationEssentials
import NIOCore
import SidecarModel

/// The peer as established by a completed, verified handshake.
package struct TLSPeer: Sendable {
    package let identity: SPIFFEID
    package let certificateSerial: String
    package let protocolVersion: String
    let cipherSuite: String
    package let applicationProtocol: String?
    /// When the peer's leaf expires: a pooled connection must not carry new work past it.
    package let certificateNotAfter: Date
    /// From the first handshake byte to a verified peer.
    package internal(set) var handshakeDuration: TimeAmount = .zero
    /// An abbreviated handshake resumed an earlier session (its peer re-checked, not re-verified
    /// against the chain: the ticket could only come from a context with the same trust).
    package internal(set) var resumed = false
}

/// One SSL object and its BIO. Knows OpenSSL's return-code conventions; knows nothing of NIO
/// channels (that is TLSHandler's job).
final class TLSConnection {
    enum Outcome {
        case done
        case wantRead
        case closeNotify
        case failed(String)
    }

    /// What a completed handshake established about the peer.
    enum VerifiedPeer {
        /// A mesh peer: its SPIFFE identity passed the identity policy.
        case mesh(TLSPeer)
        /// A web PKI server (the Consul agent's HTTPS API): chain and name checked by OpenSSL,
        /// or nothing checked when verification was turned off.
        case namedServer
    }

    let ssl: OpaquePointer
    let bio: ByteBufferBIO
    private let verification: PeerVerificationState

    /// - Parameter sessionKey: client role: resume (and cache) sessions under this key, e.g.
    ///   the instance address and expected identity; nil: always a full handshake.
    init(context: TLSContext, expectedPeer: SPIFFEID?, sessionKey: String? = nil, allocator: ByteBufferAllocator) throws {
        guard let ssl = SSL_new(context.pointer) else {
            throw TLSMaterialError("SSL_new failed: \(OpenSSLErrorQueue.summary(or: "unknown"))")
        }
        self.ssl = ssl
        self.bio = ByteBufferBIO(allocator: allocator)
        let cachesSessions = context.role == .client && sessionKey != nil
        self.verification = PeerVerificationState(
            policy: PeerIdentityPolicy(role: context.role, trustDomain: context.credentials.trustDomain, expectedPeer: expectedPeer),
            sessionCache: cachesSessions ? context.sessionCache : nil, sessionKey: cachesSessions ? sessionKey : nil)
        SSL_set_bio(ssl, bio.bio, bio.bio) // SSL owns the BIO from here on.
        _ = bs_SSL_set_app_data(ssl, Unmanaged.passUnretained(verification).toOpaque())
        switch context.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client:
            SSL_set_connect_state(ssl)
            let alpn = context.alpnWireFormat
            if !alpn.isEmpty { _ = SSL_set_alpn_protos(ssl, alpn, UInt32(alpn.count)) }
            if cachesSessions, let sessionKey { context.sessionCache.apply(to: ssl, key: sessionKey) }
        }
    }

    /// A client connection to an HTTPS server: SNI and the name (or IP address) the server's
    /// certificate must carry, checked by OpenSSL against the context's trust store.
    init(httpsContext: HTTPSClientContext, serverName: String, allocator: ByteBufferAllocator) throws {
        guard let ssl = SSL_new(httpsContext.pointer) else {
            throw TLSMaterialError("SSL_new failed: \(OpenSSLErrorQueue.summary(or: "unknown"))")
        }
        self.ssl = ssl
        self.bio = ByteBufferBIO(allocator: allocator)
        self.verification = PeerVerificationState(policy: nil)
        SSL_set_bio(ssl, bio.bio, bio.bio)
        _ = bs_SSL_set_app_data(ssl, Unmanaged.passUnretained(verification).toOpaque())
        SSL_set_connect_state(ssl)
        let isAddress = serverName.contains(":") || serverName.split(separator: ".").allSatisfy { UInt8($0) != nil }
        if !isAddress { _ = bs_SSL_set_tlsext_host_name(ssl, serverName) }
        if httpsContext.verifiesServer {
            let parameters = SSL_get0_param(ssl)
            // Like Go's crypto/tls (Consul's own clients): names come from the SAN only, never the CN.
            X509_VERIFY_PARAM_set_hostflags(parameters, UInt32(X509_CHECK_FLAG_NEVER_CHECK_SUBJECT))
            let named = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(parameters, serverName)
                                  : X509_VERIFY_PARAM_set1_host(parameters, serverName, 0)
            guard named == 1 else {
                SSL_free(ssl)
                throw TLSMaterialError("server name \(serverName): \(OpenSSLErrorQueue.summary(or: "not usable"))")
            }
        }
    }

    /// False once OpenSSL reported a protocol error, or we refused the peer: its session must
    /// not be resumed (see deinit).
    private var sessionIsGood = true

    /// The peer was refused (identity, intentions): evict its session now. A refusal still
    /// ends with our close_notify, which OpenSSL takes for a good end, so it is done here.
    func discardSession() {
        sessionIsGood = false
        if SSL_is_server(ssl) == 1, let session = SSL_get_session(ssl) {
            _ = SSL_CTX_remove_session(SSL_get_SSL_CTX(ssl), session)
        }
    }

    deinit {
        // OpenSSL treats a session whose connection is freed without our close_notify as bad:
        // the server drops it from its cache, the client marks it not resumable. Most tunnels
        // end with a plain TCP close, so only a connection that hit a TLS error, or whose peer
        // we refused, is treated so.
        if sessionIsGood { SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN) }
        SSL_free(ssl)
    }

    func handshake() -> Outcome {
        OpenSSLErrorQueue.clear()
        let result = SSL_do_handshake(ssl)
        // Server: once the client hello resumed a session (known before our first flight is
        // out, long before the client's Finished), send no new ticket. The client keeps using
        // the one it has, and the session cache grows only with full handshakes.
        if SSL_is_server(ssl) == 1, SSL_session_reused(ssl) == 1 { SSL_set_num_tickets(ssl, 0) }
        if result == 1 { return .done }
        return outcome(for: result)
    }

    /// The verified peer, or why verification did not positively succeed.
    func verifiedPeer() -> Result<VerifiedPeer, PeerVerificationError> {
        if let failure = verification.failure { return .failure(failure) }
        guard verification.policy != nil else {
            // Web PKI: OpenSSL's own chain and name checks ran; their verdict is final. With
            // verification turned off (CONSUL_HTTP_SSL_VERIFY=false) there is no verdict to read.
            if SSL_get_verify_mode(ssl) == SSL_VERIFY_NONE { return .success(.namedServer) }
            let result = SSL_get_verify_result(ssl)
            guard result == X509_V_OK else { return .failure(.chain(String(cString: X509_verify_cert_error_string(result)))) }
            return .success(.namedServer)
        }
        let resumed = SSL_session_reused(ssl) == 1
        if resumed, verification.identity == nil, let failure = recheckResumedPeer() { return .failure(failure) }
        guard let identity = verification.identity,
              let certificate = SSL_get1_peer_certificate(ssl)
        else { return .failure(.noCertificate) }
        // A verify result other than OK with an identity set cannot happen; check anyway.
        guard SSL_get_verify_result(ssl) == X509_V_OK else {
            return .failure(.chain(String(cString: X509_verify_cert_error_string(SSL_get_verify_result(ssl)))))
        }
        let peerCertificate = Certificate(taking: certificate)
        var alpnData: UnsafePointer<UInt8>?
        var alpnLength: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &alpnData, &alpnLength)
        let alpn = alpnData.map { String(decoding: UnsafeBufferPointer(start: $0, count: Int(alpnLength)), as: UTF8.self) }
        return .success(.mesh(TLSPeer(
            identity: identity,
            certificateSerial: peerCertificate.serialNumber,
            protocolVersion: String(cString: SSL_get_version(ssl)),
            cipherSuite: String(cString: SSL_CIPHER_get_name(SSL_get_current_cipher(ssl))),
            applicationProtocol: alpn,
            certificateNotAfter: peerCertificate.notAfter,
            resumed: resumed
        )))
    }

    /// A resumed session skips the verify callback. Its chain was verified when the session
    /// was made, under this same context's roots; the leaf's dates and identity are checked
    /// again now (a session must not outlive its certificate).
    private func recheckResumedPeer() -> PeerVerificationError? {
        guard let raw = SSL_get1_peer_certificate(ssl) else { return .noCertificate }
        let certificate = Certificate(taking: raw)
        let now = Date()
        guard certificate.notBefore <= now, now < certificate.notAfter else {
            return .chain("certificate of the resumed session is no longer valid")
        }
        switch verification.policy?.evaluate(certificate.leafFacts) ?? .failure(.noCertificate) {
        case .success(let identity):
            verification.identity = identity
            return nil
        case .failure(let error):
            return error
        }
    }

    /// Why the handshake failed, preferring our own verification reason over OpenSSL's text.
    func handshakeFailureReason(_ openSSLText: String) -> String {
        if let failure = verification.failure { return failure.description }
        return openSSLText
    }

    var verificationFailure: PeerVerificationError? { verification.failure }

    /// Decrypts into `buffer`'s writable space. Returns bytes read or why none were.
    func read(into buffer: inout ByteBuffer) -> (Int, Outcome) {
        OpenSSLErrorQueue.clear()
        var readCount = 0
        let result = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space -> Int in
            guard space.count > 0 else { return 0 }
            let ret = SSL_read_ex(ssl, space.baseAddress, space.count, &readCount)
            return ret == 1 ? readCount : 0
        }
        if result > 0 { return (result, .done) }
        return (0, outcome(for: -1))
    }

    /// Sizes the BIO's outbound buffer for a flush of `plaintextBytes`, written in pieces of
    /// whole records and one short last piece (RecordPacker): the records append without
    /// regrowth, each of which would copy all the ciphertext so far.
    func reserveCiphertext(plaintextBytes: Int) {
        bio.reserveOutbound(Self.ciphertextBound(plaintextBytes))
    }

    /// Record overhead is at most 96 bytes per 16 KB record (TLS 1.3: 22; TLS 1.2 CBC with
    /// SHA-384: 85), and one short record may end the plaintext. A piece that is whole records
    /// uses less than its share, so the bound of a flush covers each piece's own check.
    private static func ciphertextBound(_ plaintextBytes: Int) -> Int {
        plaintextBytes + (plaintextBytes / 16384 + 1) * 96
    }

    /// Encrypts all of `buffer` into the BIO (our BIO never refuses a write).
    func write(_ buffer: ByteBuffer) -> Outcome {
        OpenSSLErrorQueue.clear()
        bio.reserveOutbound(Self.ciphertextBound(buffer.readableBytes))
        return buffer.withUnsafeReadableBytes { bytes -> Outcome in
            var written = 0
            let ret = SSL_write_ex(ssl, bytes.baseAddress, bytes.count, &written)
            if ret == 1, written == bytes.count { return .done }
            return outcome(for: -1)
        }
    }

    /// Whether OpenSSL holds read-ahead or decrypted bytes not yet returned by SSL_read.
    var hasBufferedInput: Bool { bio.hasUnreadCiphertext || SSL_has_pending(ssl) == 1 }

    /// Queues our close_notify.
    func shutdown() {
        OpenSSLErrorQueue.clear()
        _ = SSL_shutdown(ssl)
        OpenSSLErrorQueue.clear()
    }

    private func outcome(for result: Int32) -> Outcome {
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ:
            return .wantRead
        case SSL_ERROR_ZERO_RETURN:
            return .closeNotify
        default:
            sessionIsGood = false
            return .failed(OpenSSLErrorQueue.summary(or: "TLS protocol error"))
        }
    }
}
