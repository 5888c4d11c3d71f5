import NIOConcurrencyHelpers
import NIOCore
import SidecarTLS

/// Open inbound connections, so they can be re-checked when intentions change (Consul's own
/// proxies only check at connect time, #5277) and cut when a lifetime limit is reached.
final class ConnectionRegistry: Sendable {
    /// How a connection was joined, which decides how it is re-checked: a raw tunnel carries
    /// bytes no rule reads, so an intention that needs L7 now denies it, whatever the service's
    /// protocol has become since.
    enum JoinKind: Sendable {
        case raw
        /// Every request decided (HTTP/1.1 filter or HTTP/2 gate).
        case filtered
    }

    struct Entry: Sendable {
        let id: UInt64
        /// The audit lines' ids: the tunnel's, and its mux connection's if it is a stream.
        let connectionID: String
        let muxConnectionID: String?
        let muxStream: Int?
        let source: SPIFFEID
        let sourceSerial: String
        let destination: String
        let peerAddress: String
        let joinedAs: JoinKind
        let mesh: Channel
        let local: Channel
    }

    private let state = NIOLockedValueBox<(nextID: UInt64, entries: [UInt64: Entry])>((1, [:]))

    /// Registers a joined connection; it leaves the registry by itself when both halves close.
    func register(connectionID: String, muxConnectionID: String?, muxStream: Int?, source: SPIFFEID, sourceSerial: String,
                  destination: String, peerAddress: String, joinedAs: JoinKind, mesh: Channel, local: Channel) -> Entry {
        let entry = state.withLockedValue { value -> Entry in
            let entry = Entry(id: value.nextID, connectionID: connectionID, muxConnectionID: muxConnectionID, muxStream: muxStream,
                              source: source, sourceSerial: sourceSerial, destination: destination,
                              peerAddress: peerAddress, joinedAs: joinedAs, mesh: mesh, local: local)
            value.nextID += 1
            value.entries[entry.id] = entry
            return entry
        }
        mesh.closeFuture.and(local.closeFuture).whenComplete { [weak self] _ in self?.remove(entry.id) }
        return entry
    }

    @discardableResult
    func remove(_ id: UInt64) -> Bool {
        state.withLockedValue { $0.entries.removeValue(forKey: id) != nil }
    }

    var entries: [Entry] { state.withLockedValue { Array($0.entries.values) } }
}

/// Ends an authorized connection because policy no longer allows it. Both halves are aborted:
/// a graceful close would reach the backup agent as a clean end of stream, and a cut transfer
/// must never look complete.
enum Revocation {
    static func revoke(_ entry: ConnectionRegistry.Entry, registry: ConnectionRegistry, listener: String,
                       reason: String, audit: any AuditSink) {
        // Only the first revoker audits and aborts (intention change and lifetime may race).
        guard registry.remove(entry.id) else { return }
        var event = AuditEvent(kind: .connectionRevoked, listener: listener, peerAddress: entry.peerAddress,
                               source: entry.source.uri, sourceSerial: entry.sourceSerial,
                               destination: entry.destination, decision: "deny", reason: reason)
        event.connectionID = entry.connectionID
        event.muxConnectionID = entry.muxConnectionID
        event.muxStream = entry.muxStream
        audit.record(event)
        // The glue aborts both halves together; if it is already gone, abort them directly.
        entry.mesh.triggerUserOutboundEvent(ConnectionAbortRequest()).whenFailure { _ in
            ConnectionAbort.abort(entry.mesh)
            ConnectionAbort.abort(entry.local)
        }
    }
}
