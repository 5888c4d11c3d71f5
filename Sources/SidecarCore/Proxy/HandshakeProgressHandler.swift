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
