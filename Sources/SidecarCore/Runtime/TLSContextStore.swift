import NIOConcurrencyHelpers
import SidecarTLS

/// The TLS contexts in use. New handshakes read the current pair; replacing it never touches
/// live connections (each keeps the SSL object it started with).
final class TLSContextStore: Sendable {
    private let current: NIOLockedValueBox<(server: TLSContext, client: TLSContext, generation: Int)>
    /// ALPN ids offered (client) and accepted (server): the mux's, or none.
    private let applicationProtocols: [String]

    init(credentials: TLSCredentials, applicationProtocols: [String]) throws {
        self.applicationProtocols = applicationProtocols
        let built = try Self.build(credentials, applicationProtocols)
        current = NIOLockedValueBox((built.server, built.client, 0))
    }

    var server: TLSContext { current.withLockedValue { $0.server } }
    var client: TLSContext { current.withLockedValue { $0.client } }
    var credentials: TLSCredentials { server.credentials }

    /// Builds both contexts first (the slow part, on the caller's thread, never an event
    /// loop's), then swaps them in one step. Returns the credentials replaced.
    @discardableResult
    func replace(with credentials: TLSCredentials) throws -> TLSCredentials {
        let contexts = try Self.build(credentials, applicationProtocols)
        let old = current.withLockedValue { value in
            defer { value = (contexts.server, contexts.client, value.generation + 1) }
            return value.server
        }
        old.discardSessions()
        return old.credentials
    }

    /// Fresh contexts for the same credentials: an empty server session cache (earlier tickets
    /// stop working) and an empty client one. Skipped if new credentials landed meanwhile.
    func rotateSessionKeys() throws {
        let (credentials, generation) = current.withLockedValue { ($0.server.credentials, $0.generation) }
        let contexts = try Self.build(credentials, applicationProtocols)
        let replaced = current.withLockedValue { value -> TLSContext? in
            guard value.generation == generation else { return nil }
            defer { value = (contexts.server, contexts.client, generation + 1) }
            return value.server
        }
        replaced?.discardSessions()
    }

    private static func build(_ credentials: TLSCredentials, _ alpn: [String]) throws -> (server: TLSContext, client: TLSContext) {
        (try TLSContext(role: .server, credentials: credentials, applicationProtocols: alpn),
         try TLSContext(role: .client, credentials: credentials, applicationProtocols: alpn))
    }
}
