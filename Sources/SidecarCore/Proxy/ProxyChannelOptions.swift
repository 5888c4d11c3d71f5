import NIOCore
import NIOPosix

/// Socket options shared by every proxied connection.
enum ProxyChannelOptions {
    /// Large reads cut per-byte overhead on bulk snapshot streams; adaptive so idle connections
    /// stay small. NIO keeps each channel's receive buffer, at the largest size it grew to, for
    /// its next read, so an idle connection holds one per socket for good: 1 KiB rather than 4
    /// took raw mode from 39 to 34 KiB per connection per proxy, 512 bytes from 25.2 to 24.2
    /// (mux 9.7 to 9.1; heaptrack, bench/scale.sh). Not 256: a small HTTP response (nginx's,
    /// about 340 bytes) would take two reads, and two mux frames, on every new connection.
    /// Bulk streams still grow to the maximum within a few full reads.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 512, initial: 512, maximum: 256 * 1024)
    /// Reads per readiness event (NIO's default is 4): each can take a 256 KiB buffer, all
    /// before the glue's backpressure sees any of them. 2 took the sending sidecar's peak RSS in
    /// bulk down by 2 MiB (mux) and 4.6 MiB (raw), bulk MB/s unchanged (quick bench A/B).
    static let maxMessagesPerRead: UInt = 2
    static let writeWatermark = ChannelOptions.Types.WriteBufferWaterMark(low: 128 * 1024, high: 512 * 1024)

    /// Configures a tunnel connection, accepted or dialed (to a mesh peer, or to the local
    /// app), from its initializer: no Nagle, half-closes passed on, and the read and write
    /// sizes above; `autoRead: false` leaves it unread until the tunnel is joined. Set
    /// synchronously, before the channel is registered, as bootstrap options would be: as
    /// bootstrap options NIO applies them one future at a time, with dynamic casts, for every
    /// connection (with the per-connection bootstrap, 16 % of a storage sidecar's instructions
    /// per mux stream, callgrind).
    static func configure(_ channel: Channel, autoRead: Bool = true) throws {
        let options = try options(of: channel)
        try options.setOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        try options.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        try options.setOption(ChannelOptions.recvAllocator, value: receiveAllocator)
        try options.setOption(ChannelOptions.maxMessagesPerRead, value: maxMessagesPerRead)
        try options.setOption(ChannelOptions.writeBufferWaterMark, value: writeWatermark)
        if !autoRead { try options.setOption(ChannelOptions.autoRead, value: false) }
    }

    /// Every socket channel of NIOPosix has them; anything else is refused, never left unset.
    private static func options(of channel: Channel) throws -> NIOSynchronousChannelOptions {
        guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
        return options
    }
}

extension Channel {
    /// Sets autoRead from the channel's own event loop, synchronously: no future and no
    /// dynamic cast each time (once per tunnel, and on every switch of the accepting loop).
    /// Throws if the channel refuses (closed meanwhile), or has no synchronous options (none
    /// of ours lacks them).
    func setAutoReadNow(_ on: Bool) throws {
        eventLoop.preconditionInEventLoop()
        guard let options = syncOptions else { throw ChannelError.operationUnsupported }
        try options.setOption(ChannelOptions.autoRead, value: on)
    }
}
