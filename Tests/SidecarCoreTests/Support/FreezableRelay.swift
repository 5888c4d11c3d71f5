import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A TCP relay in front of a real server that can go dark the way a host whose link went down
/// does: after `freeze()` nothing is forwarded either way and nothing is closed or reset, and
/// new connections wait in the backlog unanswered.
final class FreezableRelay: Sendable {
    private let server: Channel
    private let relayed = NIOLockedValueBox<[Channel]>([])
    private let frozen = NIOLockedValueBox(false)

    var port: Int { server.localAddress!.port! }

    init(to targetPort: Int, group: EventLoopGroup) async throws {
        let relayed = self.relayed, frozen = self.frozen
        server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: inbound.eventLoop)
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMap { outbound in
                        let a = RelayHalf(frozen: frozen), b = RelayHalf(frozen: frozen)
                        a.partner = outbound
                        b.partner = inbound
                        relayed.withLockedValue { $0 += [inbound, outbound] }
                        return inbound.pipeline.addHandler(a).and(outbound.pipeline.addHandler(b)).map { _ in }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    /// Stops forwarding on every relayed connection and stops accepting new ones.
    func freeze() async {
        frozen.withLockedValue { $0 = true }
        try? await server.setOption(.autoRead, value: false).get()
        for channel in relayed.withLockedValue({ $0 }) {
            try? await channel.setOption(.autoRead, value: false).get()
        }
    }

    func stop() async {
        for channel in relayed.withLockedValue({ $0 }) { try? await channel.close() }
        try? await server.close()
    }
}

/// One direction of the relay: writes what it reads to the partner.
private final class RelayHalf: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var partner: Channel?
    private let frozen: NIOLockedValueBox<Bool>

    init(frozen: NIOLockedValueBox<Bool>) {
        self.frozen = frozen
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Frozen: nothing more is read (the kernel buffers fill, as with a peer that is gone);
        // what was already read is dropped.
        guard !frozen.withLockedValue({ $0 }) else { return }
        partner?.writeAndFlush(data, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.close(promise: nil)
        context.fireChannelInactive()
    }
}
