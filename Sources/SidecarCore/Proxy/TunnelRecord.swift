import FoundationEssentials

/// One joined tunnel as the admin API's `/connections` lists it.
struct TunnelRecord: Sendable {
    enum Direction: String, Sendable { case inbound, upstream }

    var connectionID: String
    var muxConnectionID: String?
    var muxStream: Int?
    var direction: Direction
    var listener: String
    /// Inbound: the verified source; upstream: the verified destination.
    var peerIdentity: String
    /// Inbound: the other sidecar; upstream: the local caller.
    var peerAddress: String
    /// Upstream: the local process, when identified.
    var caller: LocalCaller?
    /// Inbound: the intention (or default) that allowed it, as audited.
    var intention: String?
    var opened = Date()
}

/// A tunnel and its bytes at the moment `/connections` asked.
struct LiveTunnel: Sendable {
    var record: TunnelRecord
    var bytesFromMesh: Int
    var bytesToMesh: Int
}
