import NIOCore

/// What a stream's Channel and ChannelCore do without touching its state: options, addresses,
/// and the operations a stream does not have.
extension MuxStreamChannel {
    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop { return eventLoop.makeCompletedFuture { try setOption0(option, value) } }
        return eventLoop.submit { try self.setOption0(option, value) }
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if eventLoop.inEventLoop { return eventLoop.makeCompletedFuture { try getOption0(option) } }
        return eventLoop.submit { try self.getOption0(option) }
    }

    /// On the stream's loop, without a future: a joined tunnel turns autoRead on this way.
    var syncOptions: NIOSynchronousChannelOptions? { SynchronousOptions(stream: self) }

    struct SynchronousOptions: NIOSynchronousChannelOptions {
        let stream: MuxStreamChannel

        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            stream.eventLoop.preconditionInEventLoop()
            try stream.setOption0(option, value)
        }

        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            stream.eventLoop.preconditionInEventLoop()
            return try stream.getOption0(option)
        }
    }

    private func setOption0<Option: ChannelOption>(_ option: Option, _ value: Option.Value) throws {
        if option is ChannelOptions.Types.AutoReadOption {
            setAutoRead(value as! Bool)
        }
        // Other socket options have no meaning on a stream; accepted and ignored.
    }

    private func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        if option is ChannelOptions.Types.AutoReadOption { return autoRead as! Option.Value }
        if option is ChannelOptions.Types.AllowRemoteHalfClosureOption { return true as! Option.Value }
        throw ChannelError.operationUnsupported
    }

    func localAddress0() throws -> SocketAddress {
        guard let address = parent?.localAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    func remoteAddress0() throws -> SocketAddress {
        guard let address = parent?.remoteAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    func register0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }

    func channelRead0(_ data: NIOAny) {}
    func errorCaught0(error: Error) {}
}
