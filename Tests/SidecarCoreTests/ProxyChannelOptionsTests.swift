import Glibc
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import SidecarCore

/// The options every tunnel connection gets, accepted or dialed, read back from real sockets:
/// they are set by hand in the initializers (not as bootstrap options), so nothing else would
/// notice one going missing until a bulk stream or a half-close misbehaved.
@Suite("Proxy channel options")
struct ProxyChannelOptionsTests {
    final class Captured: @unchecked Sendable {
        let accepted: EventLoopPromise<Channel>
        init(_ loop: EventLoop) { accepted = loop.makePromise() }
    }

    /// TCP_NODELAY as the kernel has it.
    static func noDelay(_ channel: Channel) async throws -> Bool {
        let value = try await channel.eventLoop.submit {
            try channel.syncOptions!.getOption(ChannelOptions.socketOption(.tcp_nodelay))
        }.get()
        return value != 0
    }

    static func expectTunnelOptions(_ channel: Channel, autoRead: Bool) async throws {
        let options = try await channel.eventLoop.submit { () -> (Bool, Bool, UInt, ChannelOptions.Types.WriteBufferWaterMark, Int) in
            let sync = channel.syncOptions!
            var allocator = try sync.getOption(ChannelOptions.recvAllocator)
            let first = allocator.buffer(allocator: ByteBufferAllocator()).capacity
            return (try sync.getOption(ChannelOptions.allowRemoteHalfClosure), try sync.getOption(ChannelOptions.autoRead),
                    try sync.getOption(ChannelOptions.maxMessagesPerRead), try sync.getOption(ChannelOptions.writeBufferWaterMark),
                    first)
        }.get()
        #expect(options.0, "half-closes passed on")
        #expect(options.1 == autoRead)
        #expect(options.2 == ProxyChannelOptions.maxMessagesPerRead)
        #expect(options.3.low == ProxyChannelOptions.writeWatermark.low && options.3.high == ProxyChannelOptions.writeWatermark.high)
        #expect(options.4 == 512, "the adaptive allocator's 512-byte first read, not NIO's default")
        #expect(try await noDelay(channel), "TCP_NODELAY, autoRead \(autoRead)")
    }

    @Test("an accepted connection and a dialed one both carry the tunnel options")
    func acceptedAndDialed() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let captured = Captured(group.next())
        let server = try await ListenerSocket.bootstrap(group: group) { channel in
            captured.accepted.succeed(channel)
            return channel.eventLoop.makeSucceededVoidFuture()
        }.bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try ProxyChannelOptions.configure(channel, autoRead: false) }
            }
            .connect(to: server.localAddress!).get()
        defer { client.close(promise: nil) }
        let accepted = try await captured.accepted.futureResult.get()
        try await Self.expectTunnelOptions(accepted, autoRead: true)
        try await Self.expectTunnelOptions(client, autoRead: false)
    }
}
