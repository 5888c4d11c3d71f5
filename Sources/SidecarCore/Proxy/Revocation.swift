import NIOCore
import SidecarTLS
import SidecarModel

/// How an inbound tunnel was authorized, kept in its `ConnectionTable` entry so it can be
/// re-checked when intentions change (Consul's own proxies only check at connect time,
/// #5277) and cut when a lifetime limit is reached. A class, immutable: the table's dictionary
/// buckets hold each entry whole, so an inline 152 bytes cost every entry its share (this and
/// `CarrierAuthorization` boxed: 521 -> 273 bytes an entry).
final class InboundAuthorization: Sendable {
    /// How a connection was joined, which decides how it is re-checked: a raw tunnel carries
    /// bytes no rule reads, so an intention that needs L7 now denies it, whatever the service's
    /// protocol has become since.
    enum JoinKind: Sendable {
        case raw
        /// Every request decided (HTTP/1.1 filter or HTTP/2 gate).
        case filtered
    }

    let source: SPIFFEID
    let sourceSerial: String
    let destination: String
    let joinedAs: JoinKind
    /// The local app's side of the tunnel (the table's entry is the mesh side).
    let local: Channel

    init(source: SPIFFEID, sourceSerial: String, destination: String, joinedAs: JoinKind, local: Channel) {
        self.source = source
        self.sourceSerial = sourceSerial
        self.destination = destination
        self.joinedAs = joinedAs
        self.local = local
    }
}

/// An accepted mux connection, kept in its `ConnectionTable` entry so an intentions update
/// that denies its source stops it taking new streams (its running streams are re-checked
/// one by one, like plain connections). A class, immutable, as `InboundAuthorization`.
final class CarrierAuthorization: Sendable {
    let source: SPIFFEID
    /// GOAWAY, audited once with the reason given; hops to the connection's event loop.
    let retire: @Sendable (_ reason: String) -> Void

    init(source: SPIFFEID, retire: @escaping @Sendable (_ reason: String) -> Void) {
        self.source = source
        self.retire = retire
    }
}

/// Ends an authorized connection because policy no longer allows it. Both halves are aborted:
/// a graceful close would reach the backup agent as a clean end of stream, and a cut transfer
/// must never look complete.
enum Revocation {
    /// Audits and aborts the tunnel whose mesh side is `mesh`. False when it was not there to
    /// revoke: already revoked by someone else, closed, or never registered.
    @discardableResult
    static func revoke(_ mesh: Channel, table: ConnectionTable, listener: String, reason: String, audit: any AuditSink) -> Bool {
        // Only the first revoker audits and aborts (intention change and lifetime may race).
        guard let entry = table.claimForRevocation(mesh), let authorization = entry.inbound else { return false }
        var event = AuditEvent(kind: .connectionRevoked, listener: listener, peerAddress: entry.tunnel?.peerAddress,
                               source: authorization.source.uri, sourceSerial: authorization.sourceSerial,
                               destination: authorization.destination, decision: "deny", reason: reason)
        event.connectionID = entry.id
        event.muxConnectionID = entry.tunnel?.muxConnectionID
        event.muxStream = entry.tunnel?.muxStream
        audit.record(event)
        // The glue aborts both halves together; if it is already gone, abort them directly.
        let local = authorization.local
        mesh.triggerUserOutboundEvent(ConnectionAbortRequest()).whenFailure { _ in
            ConnectionAbort.abort(mesh)
            ConnectionAbort.abort(local)
        }
        return true
    }
}
