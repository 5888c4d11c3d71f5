import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A TCP relay in front of a real server that can go dark the way a host whose link went down
/// does: after `freeze()` nothing is forwarded either way and nothing is closed or reset, and
/// new connections wait in the backlog unanswered. `hold()` / `release()` delay instead: what
/// arrives while held is kept and forwarded, in order, on release (a slow link).
package final class FreezableRelay: Sendable {
    private let server: Channel
    private let relayed = NIOLockedValueBox<[Channel]>([])
    private let frozen = NIOLockedValueBox(false)
    private let held = NIOLockedValueBox(false)
    private let halves = NIOLockedValueBox<[RelayHalf]>([])

    package var port: Int { server.localAddress!.port! }

    package init(to targetPort: Int, group: EventLoopGroup) async throws {
        let relayed = self.relayed, frozen = self.frozen, held = self.held, halves = self.halves
        server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: inbound.eventLoop)
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMap { outbound in
                        let a = RelayHalf(frozen: frozen, held: held), b = RelayHalf(frozen: frozen, held: held)
                        a.partner = outbound
                        b.partner = inbound
                        relayed.withLockedValue { $0 += [inbound, outbound] }
                        halves.withLockedValue { $0 += [a, b] }
                        return inbound.pipeline.addHandler(a).and(outbound.pipeline.addHandler(b)).map { _ in }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    /// Stops forwarding on every relayed connection and stops accepting new ones.
    package func freeze() async {
        frozen.withLockedValue { $0 = true }
        try? await server.setOption(.autoRead, value: false).get()
        for channel in relayed.withLockedValue({ $0 }) {
            try? await channel.setOption(.autoRead, value: false).get()
        }
    }

    /// Keeps everything that arrives, both ways, until `release()`.
    package func hold() { held.withLockedValue { $0 = true } }

    /// Forwards what was kept, then everything as it comes.
    package func release() async {
        held.withLockedValue { $0 = false }
        for half in halves.withLockedValue({ $0 }) { try? await half.releaseKept() }
    }

    package func stop() async {
        for channel in relayed.withLockedValue({ $0 }) { try? await channel.close() }
        try? await server.close()
    }
}

/// One direction of the relay: writes what it reads to the partner.
private final class RelayHalf: ChannelInboundHandler, @unchecked Sendable {
    package typealias InboundIn = ByteBuffer
    package var partner: Channel?
    private let frozen: NIOLockedValueBox<Bool>
    private let held: NIOLockedValueBox<Bool>
    private var kept: [ByteBuffer] = []
    private var eventLoop: EventLoop?

    package init(frozen: NIOLockedValueBox<Bool>, held: NIOLockedValueBox<Bool>) {
        self.frozen = frozen
        self.held = held
    }

    package func handlerAdded(context: ChannelHandlerContext) { eventLoop = context.eventLoop }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Frozen: nothing more is read (the kernel buffers fill, as with a peer that is gone);
        // what was already read is dropped.
        guard !frozen.withLockedValue({ $0 }) else { return }
        if held.withLockedValue({ $0 }) || !kept.isEmpty {
            kept.append(unwrapInboundIn(data))
            return
        }
        partner?.writeAndFlush(data, promise: nil)
    }

    /// On this half's event loop: forwards what was kept while held.
    package func releaseKept() async throws {
        guard let eventLoop else { return }
        try await eventLoop.submit {
            for buffer in self.kept { self.partner?.write(NIOAny(buffer), promise: nil) }
            self.kept.removeAll()
            self.partner?.flush()
        }.get()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        partner?.close(promise: nil)
        context.fireChannelInactive()
    }
}
