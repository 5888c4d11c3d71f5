import NIOCore
import NIOEmbedded
@testable import SidecarCore
@testable import SidecarTLS
import Testing
import TestFixtures
@testable import SidecarModel

/// The table's part in revocation: an inbound tunnel is registered with how it was
/// authorized, revoked (audited and aborted) exactly once, and gone once it closes.
@Suite("Connection table: inbound tunnels and revocation")
struct InboundRevocationTableTests {
    static let source = SPIFFEID(trustDomain: "example.consul", datacenter: "dc1", service: "backup-agent")

    /// A tracked inbound tunnel (mesh side and local side) registered as joined.
    static func registered(in table: ConnectionTable, id: String, joinedAs: InboundAuthorization.JoinKind = .raw,
                           mux: (connection: String, stream: Int)? = nil) -> (mesh: EmbeddedChannel, local: EmbeddedChannel) {
        let mesh = EmbeddedChannel(), local = EmbeddedChannel()
        table.trackTunnel(mesh, listener: "public", connectionID: id)
        let record = TunnelRecord(connectionID: id, muxConnectionID: mux?.connection, muxStream: mux?.stream, direction: .inbound,
                                  listener: "public", peerIdentity: source.uri, peerAddress: "10.0.0.7:41000")
        let authorization = InboundAuthorization(source: source, sourceSerial: "0a:0b", destination: "storage",
                                                 joinedAs: joinedAs, local: local)
        #expect(table.registerInbound(mesh, as: record, authorization: authorization))
        return (mesh, local)
    }

    @Test("Only registered, unrevoked tunnels are re-checked; a revocation is claimed once")
    func claimedOnce() throws {
        let table = ConnectionTable()
        let first = Self.registered(in: table, id: "c-1", joinedAs: .filtered)
        let second = Self.registered(in: table, id: "c-2")
        let handshaking = EmbeddedChannel()
        _ = table.trackHandshaking(handshaking, listener: "public", connectionID: "c-3")
        #expect(Set(table.inboundTunnels.map(\.id)) == ["c-1", "c-2"], "a connection still in its handshake is not one")
        #expect(table.inboundTunnels.first { $0.id == "c-1" }?.inbound?.joinedAs == .filtered)

        #expect(table.claimForRevocation(first.mesh)?.id == "c-1")
        #expect(table.claimForRevocation(first.mesh) == nil, "an intention change and the lifetime limit racing: one wins")
        #expect(table.inboundTunnels.map(\.id) == ["c-2"])
        #expect(table.total == 3, "a revoked tunnel stays counted until it closes")
        #expect(table.claimForRevocation(handshaking) == nil, "nothing registered: nothing to revoke")
        _ = second
    }

    @Test("A tunnel that closed is gone: it cannot be registered or revoked")
    func closedIsGone() throws {
        let table = ConnectionTable()
        let (mesh, local) = Self.registered(in: table, id: "c-1")
        try mesh.close().wait()
        mesh.embeddedEventLoop.run() // the close callbacks
        #expect(table.inboundTunnels.isEmpty)
        #expect(table.claimForRevocation(mesh) == nil)
        let record = TunnelRecord(connectionID: "c-1", direction: .inbound, listener: "public", peerIdentity: Self.source.uri,
                                  peerAddress: "10.0.0.7:41000")
        let authorization = InboundAuthorization(source: Self.source, sourceSerial: "0a:0b", destination: "storage",
                                                 joinedAs: .raw, local: local)
        #expect(!table.registerInbound(mesh, as: record, authorization: authorization))
    }

    @Test("Revocation audits one line with the tunnel's ids and aborts both sides")
    func revocationAuditsAndAborts() throws {
        let table = ConnectionTable()
        let (mesh, local) = Self.registered(in: table, id: "c-9", mux: ("m-1", 5))
        let audit = MemoryAuditSink()
        #expect(Revocation.revoke(mesh, table: table, listener: "public", reason: "revoked by intentions update: deny", audit: audit))
        #expect(!Revocation.revoke(mesh, table: table, listener: "public", reason: "again", audit: audit))
        let lines = audit.events.filter { $0.kind == .connectionRevoked }
        #expect(lines.count == 1)
        let line = try #require(lines.first)
        #expect(line.connectionID == "c-9" && line.muxConnectionID == "m-1" && line.muxStream == 5)
        #expect(line.source == Self.source.uri && line.sourceSerial == "0a:0b" && line.destination == "storage")
        #expect(line.peerAddress == "10.0.0.7:41000" && line.decision == "deny")
        // No glue on these channels, so the abort request fails and both are aborted directly.
        #expect(!mesh.isActive && !local.isActive)
    }
}
