import Foundation
import NIOCore

/// First in an accepted public connection's pipeline until the peer's first bytes arrive:
/// tells the table the handshake is progressing (so it is not the one evicted for a silent
/// connection's sake), then steps aside.
final class HandshakeProgressHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let table: ConnectionTable

    init(table: ConnectionTable) {
        self.table = table
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        table.spoke(context.channel)
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

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
