import NIOCore

/// What a stream's Channel and ChannelCore do without touching its state: options, addresses,
/// and the operations a stream does not have.
extension MuxStreamChannel {
    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        eventLoop.submit {
            if option is ChannelOptions.Types.AutoReadOption {
                self.setAutoRead(value as! Bool)
            }
            // Other socket options have no meaning on a stream; accepted and ignored.
        }
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        eventLoop.submit {
            if option is ChannelOptions.Types.AutoReadOption { return self.autoRead as! Option.Value }
            if option is ChannelOptions.Types.AllowRemoteHalfClosureOption { return true as! Option.Value }
            throw ChannelError.operationUnsupported
        }
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
