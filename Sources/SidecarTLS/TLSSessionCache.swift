import COpenSSL
import NIOConcurrencyHelpers

/// Client side of TLS session resumption: the latest resumable session per destination
/// (instance address and the identity it must present). Belongs to one client `TLSContext`,
/// so new certificates or roots (a new context) start with an empty cache: nothing negotiated
/// under the old trust is resumed under the new one.
final class TLSSessionCache: Sendable {
    /// `@unchecked Sendable`: wraps an SSL_SESSION that is never modified once cached.
    private final class Session: @unchecked Sendable {
        let pointer: OpaquePointer
        init(taking pointer: OpaquePointer) { self.pointer = pointer }
        deinit { SSL_SESSION_free(pointer) }
    }

    private let sessions = NIOLockedValueBox<[String: Session]>([:])
    /// Destinations are few (instances of our upstreams); the bound only stops a runaway.
    private static let capacity = 1024

    /// Takes ownership of `session` (the reference OpenSSL hands the new-session callback).
    func store(_ session: OpaquePointer, for key: String) {
        let entry = Session(taking: session)
        sessions.withLockedValue { value in
            if value.count >= Self.capacity, value[key] == nil { value.removeAll() }
            value[key] = entry
        }
    }

    /// Offers the cached session for `key` to a new client connection, if it is still resumable.
    func apply(to ssl: OpaquePointer, key: String) {
        sessions.withLockedValue { value in
            guard let session = value[key] else { return }
            guard SSL_SESSION_is_resumable(session.pointer) == 1 else {
                value[key] = nil
                return
            }
            // A copy: when a TLS 1.3 connection resumes, OpenSSL marks the session it used as
            // not resumable (single-use tickets). Our server sends no new ticket on resumption
            // and keeps the session, so the kept original serves every later connection.
            guard let copy = SSL_SESSION_dup(session.pointer) else { return }
            _ = SSL_set_session(ssl, copy)
            SSL_SESSION_free(copy)
        }
    }

    var count: Int { sessions.withLockedValue { $0.count } }
}

/// OpenSSL calls this when a client connection receives a session (TLS 1.3: a NewSessionTicket
/// after the handshake). Only sessions whose peer we verified are kept; returning 1 keeps the
/// reference OpenSSL passed.
let newClientSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { ssl, session in
    guard let ssl, let session, let stateRaw = bs_SSL_get_app_data(ssl) else { return 0 }
    let state = Unmanaged<PeerVerificationState>.fromOpaque(stateRaw).takeUnretainedValue()
    guard let cache = state.sessionCache, let key = state.sessionKey, state.identity != nil, state.failure == nil else { return 0 }
    cache.store(session, for: key)
    return 1
}
