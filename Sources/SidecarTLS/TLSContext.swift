import COpenSSL
import SidecarModel

/// An SSL_CTX built from one `TLSCredentials` snapshot for one role. Immutable after init;
/// building one costs real work (parsing, key checks), so callers build them off the event loop
/// and share them between connections.
/// `@unchecked Sendable`: the SSL_CTX is immutable after init (OpenSSL locks its own caches).
package final class TLSContext: @unchecked Sendable {
    let pointer: OpaquePointer
    package let role: TLSRole
    package let credentials: TLSCredentials
    /// ALPN protocol ids we offer (client) or accept (server), in preference order.
    package let applicationProtocols: [String]
    /// Client role: sessions to resume, per destination.
    let sessionCache = TLSSessionCache()
    /// How long a session may be resumed (the contexts, and so their caches, are also replaced
    /// at least this often).
    package static let sessionLifetimeSeconds = 3600
    /// Server role: sessions kept for resumption. Only full handshakes add one (a resumed
    /// connection gets no new ticket), so this is about one per client sidecar and destination
    /// within `sessionLifetimeSeconds`; past it the oldest go first and cost a full handshake.
    static let serverSessionCacheEntries = 1024
    /// The largest certificate list a peer may send, in bytes.
    package static let maxPeerCertificateListBytes = 32 * 1024
    /// Sessions in the server-side cache now (tests and metrics).
    package var cachedServerSessions: Int { bs_SSL_CTX_sess_number(pointer) }

    /// Empties the session cache. For a context just replaced: live connections keep it alive,
    /// but nothing resumes from it any more, so its sessions (each holding a peer certificate)
    /// would only hold memory until the last of those connections ends.
    package func discardSessions() { SSL_CTX_flush_sessions(pointer, 0) }

    // TLS 1.3 suites are all AEAD; for TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305.
    static let tls13CipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    static let tls12CipherList = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    package init(role: TLSRole, credentials: TLSCredentials, applicationProtocols: [String] = []) throws {
        OpenSSLErrorQueue.clear()
        guard let context = SSL_CTX_new(TLS_method()) else {
            throw TLSMaterialError("SSL_CTX_new failed: \(OpenSSLErrorQueue.summary(or: "unknown"))")
        }
        self.pointer = context
        self.role = role
        self.credentials = credentials
        self.applicationProtocols = applicationProtocols

        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw TLSMaterialError("\(what): \(OpenSSLErrorQueue.summary(or: "failed"))") }
        }
        try check(bs_SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1, "minimum TLS version")
        try check(SSL_CTX_set_ciphersuites(context, Self.tls13CipherSuites) == 1, "TLS 1.3 cipher suites")
        try check(SSL_CTX_set_cipher_list(context, Self.tls12CipherList) == 1, "TLS 1.2 cipher list")
        try check(bs_SSL_CTX_set1_groups_list(context, "X25519:P-256:P-384") == 1, "key exchange groups")
        let options = bs_SSL_OP_NO_RENEGOTIATION() | bs_SSL_OP_NO_COMPRESSION() | bs_SSL_OP_CIPHER_SERVER_PREFERENCE()
        SSL_CTX_set_options(context, options)
        // Session resumption (TLS 1.3). The server keeps its sessions in this SSL_CTX's own
        // bounded cache and hands out tickets that only name them: a stateless ticket carries
        // the whole session, and decoding it (the client's certificate included) was a fifth
        // of the CPU of a resumed handshake in the profile. A new context (new leaf, new roots,
        // or the periodic rotation) starts with an empty cache, so nothing made under the old
        // trust resumes under the new. A resumed peer is still re-checked (`verifiedPeer`) and
        // authorized against the current intentions. No early data, so no replay window.
        switch role {
        case .server:
            _ = bs_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_SERVER))
            _ = bs_SSL_CTX_sess_set_cache_size(context, Self.serverSessionCacheEntries)
            SSL_CTX_set_options(context, bs_SSL_OP_NO_TICKET())
            SSL_CTX_set_num_tickets(context, 1)
            SSL_CTX_set_timeout(context, Self.sessionLifetimeSeconds)
            // Required for caching when the peer is verified. The same everywhere, so it
            // separates nothing: this context serves the public listener alone, and every
            // connection on it, resumed or not, is authorized on its own.
            let sessionContext = Array("backup-sidecar".utf8)
            try check(SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count)) == 1,
                      "session id context")
        case .client:
            _ = bs_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
            SSL_CTX_sess_set_new_cb(context, newClientSessionCallback)
        }
        // Idle connections return their 16 KB record buffers: memory per idle connection matters
        // with thousands of open snapshot sessions.
        _ = bs_SSL_CTX_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS))
        bs_SSL_CTX_set_read_ahead(context, 1)
        // A peer's certificate list above 32 KB is refused before any parsing or signature
        // work (Consul chains are a few KB; a cached session keeps the chain it came with).
        _ = bs_SSL_CTX_set_max_cert_list(context, Self.maxPeerCertificateListBytes)

        try check(SSL_CTX_use_certificate(context, credentials.leaf.pointer) == 1, "leaf certificate")
        for intermediate in credentials.chain.dropFirst() {
            try check(bs_SSL_CTX_add1_chain_cert(context, intermediate.pointer) == 1, "intermediate certificate")
        }
        try check(SSL_CTX_use_PrivateKey(context, credentials.privateKey.pointer) == 1, "private key")
        try check(SSL_CTX_check_private_key(context) == 1, "private key does not match certificate")

        guard let store = SSL_CTX_get_cert_store(context) else { throw TLSMaterialError("no certificate store") }
        for root in credentials.trustedRoots {
            try check(X509_STORE_add_cert(store, root.pointer) == 1, "trusted root \(root.serialNumber)")
        }
        // Client certificates are mandatory on the server side; no hostname check anywhere:
        // identity is the SPIFFE URI, checked in the verify callback.
        let mode = role == .server ? (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT) : SSL_VERIFY_PEER
        SSL_CTX_set_verify(context, mode, peerVerifyCallback)
        SSL_CTX_set_verify_depth(context, 8)

        if role == .server, !applicationProtocols.isEmpty {
            SSL_CTX_set_alpn_select_cb(context, alpnSelectCallback, Unmanaged.passUnretained(self).toOpaque())
        }
    }

    deinit { SSL_CTX_free(pointer) }

    /// ALPN wire format: length-prefixed protocol ids.
    var alpnWireFormat: [UInt8] {
        applicationProtocols.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
    }
}

/// Runs for every certificate in the peer chain. OpenSSL has already checked signatures,
/// dates and purpose (`preverified`); at the leaf we apply the SPIFFE identity policy.
private let peerVerifyCallback: @convention(c) (Int32, OpaquePointer?) -> Int32 = { preverified, store in
    guard let store,
          let ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()),
          let stateRaw = bs_SSL_get_app_data(OpaquePointer(ssl))
    else { return 0 }
    let state = Unmanaged<PeerVerificationState>.fromOpaque(stateRaw).takeUnretainedValue()
    if preverified == 0 {
        let code = X509_STORE_CTX_get_error(store)
        let depth = X509_STORE_CTX_get_error_depth(store)
        state.failure = .chain("\(String(cString: X509_verify_cert_error_string(Int(code)))) at depth \(depth)")
        return 0
    }
    guard X509_STORE_CTX_get_error_depth(store) == 0, let leaf = X509_STORE_CTX_get_current_cert(store) else {
        return 1
    }
    // Web PKI (no identity policy): the name was checked by OpenSSL with the chain.
    guard let policy = state.policy else { return 1 }
    switch policy.evaluate(Certificate(retaining: leaf).leafFacts) {
    case .success(let identity):
        state.identity = identity
        return 1
    case .failure(let error):
        state.failure = error
        X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    }
}

/// Server side: pick the first of our protocols the client offers; no overlap means no ALPN
/// (plain Connect TLS), never a failed handshake.
private let alpnSelectCallback: @convention(c) (
    OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
    UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?
) -> Int32 = { _, out, outLength, offered, offeredLength, argument in
    guard let argument, let out, let outLength, let offered else { return SSL_TLSEXT_ERR_NOACK }
    let context = Unmanaged<TLSContext>.fromOpaque(argument).takeUnretainedValue()
    let offeredBytes = UnsafeBufferPointer(start: offered, count: Int(offeredLength))
    for wanted in context.applicationProtocols {
        var index = 0
        while index < offeredBytes.count {
            let length = Int(offeredBytes[index])
            let start = index + 1
            guard start + length <= offeredBytes.count else { break }
            if length == wanted.utf8.count, offeredBytes[start..<start + length].elementsEqual(wanted.utf8) {
                out.pointee = offered + start
                outLength.pointee = UInt8(length)
                return SSL_TLSEXT_ERR_OK
            }
            index = start + length
        }
    }
    return SSL_TLSEXT_ERR_NOACK
}

/// Per-connection verification inputs and results, reachable from the C verify callback.
final class PeerVerificationState {
    /// nil: a web PKI server, checked by OpenSSL's chain and host name verification alone.
    let policy: PeerIdentityPolicy?
    var identity: SPIFFEID?
    var failure: PeerVerificationError?
    /// Client role: where this connection's session is cached for resumption.
    let sessionCache: TLSSessionCache?
    let sessionKey: String?

    init(policy: PeerIdentityPolicy?, sessionCache: TLSSessionCache? = nil, sessionKey: String? = nil) {
        self.policy = policy
        self.sessionCache = sessionCache
        self.sessionKey = sessionKey
    }
}
