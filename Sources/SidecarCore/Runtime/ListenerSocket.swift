import FoundationEssentials
import Glibc
import Logging
import NIOCore
import NIOPosix
import SidecarModel

/// Binding a listener's socket: the options every listener shares, TCP and unix sockets.
enum ListenerSocket {
    /// Room for peers to wait in while a listener is paused at its limits.
    static let backlog: CInt = 1024

    /// `initializer` sets up each accepted connection after `ProxyChannelOptions` configured it.
    static func bootstrap(group: EventLoopGroup,
                          initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: Self.backlog)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                do {
                    try ProxyChannelOptions.configure(channel)
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
                return initializer(channel)
            }
    }

    /// Binds host:port; the error names the listener and the address.
    static func bind(_ bootstrap: ServerBootstrap, host: String, port: Int, what: String, logger: Logger) async throws -> Channel {
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            logger.info("listening", metadata: ["listener": "\(what)", "address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
            return channel
        } catch {
            throw SidecarError.bindFailed(listener: what, address: "\(host):\(port)", reason: "\(error)")
        }
    }

    /// Binds host:port once and accepts on every event loop of `group`: one server channel per
    /// loop, each on its own descriptor of the one listening socket, so the `ConnectionTable`
    /// can let the least loaded loop's acceptor take the next connection; the others are bound
    /// paused. The caller registers them with `ConnectionTable.adopt(_:acceptors:)`. (With
    /// SO_REUSEPORT each socket would have its own queue, and a paused one would strand its
    /// connections.) One loop: a plain bind.
    static func bindOnEveryLoop(_ bootstrap: (EventLoop) -> ServerBootstrap, host: String, port: Int, what: String,
                                group: EventLoopGroup, logger: Logger) async throws -> [Channel] {
        let loops = Array(group.makeIterator())
        guard loops.count > 1 else {
            return [try await bind(bootstrap(loops.first ?? group.next()), host: host, port: port, what: what, logger: logger)]
        }
        let address = "\(host):\(port)"
        // One copy per loop for its channel, and one kept here: NIO's channels own and may
        // close theirs at any time, so the socket is only touched through this one.
        var descriptors: [CInt] = []
        do {
            descriptors.append(try listeningSocket(host: host, port: port))
            for _ in 0..<loops.count {
                let copy = fcntl(descriptors[0], F_DUPFD_CLOEXEC, 0)
                guard copy >= 0 else { throw SidecarError.bindFailed(listener: what, address: address, reason: String(cString: strerror(errno))) }
                descriptors.append(copy)
            }
        } catch {
            for descriptor in descriptors { Glibc.close(descriptor) }
            throw error as? SidecarError ?? SidecarError.bindFailed(listener: what, address: address, reason: "\(error)")
        }
        let own = descriptors.removeLast()
        defer { Glibc.close(own) }
        var channels: [Channel] = []
        for (index, loop) in loops.enumerated() {
            do {
                // From here the channel owns its descriptor, and closes it. Only the first
                // accepts at once: two acceptors woken for one connection is what the table
                // must never allow (see `ConnectionTable.reconcile`).
                let configured = bootstrap(loop).serverChannelOption(ChannelOptions.autoRead, value: index == 0)
                channels.append(try await configured.withBoundSocket(descriptors[index]).get())
            } catch {
                // Whether NIO took this descriptor is unknown here: stop the socket listening
                // (every copy shares it), so the port is free for a retry either way.
                shutdown(own, CInt(SHUT_RDWR))
                for descriptor in descriptors[(index + 1)...] { Glibc.close(descriptor) }
                for channel in channels { try? await channel.close() }
                throw SidecarError.bindFailed(listener: what, address: address, reason: "\(error)")
            }
        }
        // NIO listens again, with its own backlog of 128, on each socket it wraps.
        if listen(own, Self.backlog) != 0 {
            logger.warning("listen backlog not raised", metadata: ["listener": "\(what)", "error": "\(String(cString: strerror(errno)))"])
        }
        logger.info("listening", metadata: ["listener": "\(what)", "address": "\(channels[0].localAddress.map { "\($0)" } ?? "?")",
                                            "acceptors": "\(channels.count)"])
        return channels
    }

    /// A listening TCP socket (nonblocking, close-on-exec, SO_REUSEADDR).
    private static func listeningSocket(host: String, port: Int) throws -> CInt {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let descriptor = socket(address.protocol.rawValue, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw ListenerSocketError(String(cString: strerror(errno))) }
        var one: CInt = 1
        let listening = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)) == 0
            && address.withSockAddr({ Glibc.bind(descriptor, $0, socklen_t($1)) }) == 0
            && listen(descriptor, Self.backlog) == 0
        guard listening else {
            let reason = String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw ListenerSocketError(reason)
        }
        return descriptor
    }

    /// Binds a unix socket: a stale socket file left by a crashed sidecar is replaced, but a
    /// live one (someone answers) or a file that is not a socket is an error. The file gets
    /// `mode` (0600 when unset: owner only) and is removed when the listener closes.
    static func bindUnixSocket(_ bootstrap: ServerBootstrap, path: String, mode: UInt16?, what: String,
                               group: EventLoopGroup, logger: Logger) async throws -> Channel {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw SidecarError.socketPathInUse("\(path) exists and is not a socket; refusing to replace it")
            }
            if (try? await ClientBootstrap(group: group).connect(unixDomainSocketPath: path).get())?.close(promise: nil) != nil {
                throw SidecarError.socketPathInUse("\(path) is in use by another process")
            }
            unlink(path)
        }
        // Bind inside a private directory, set the mode, then rename into place: the socket
        // is never reachable at `path` with anything but its final permissions.
        let parent = FilePath.parent(of: path)
        var template = Array("\(parent)/.backup-sidecar-XXXXXX".utf8CString)
        guard let privateDirectory = mkdtemp(&template).map({ String(cString: $0) }) else {
            throw SidecarError.bindFailed(listener: what, address: path, reason: "cannot create a private directory in \(parent)")
        }
        defer { rmdir(privateDirectory) }
        let staging = "\(privateDirectory)/socket"
        let channel: Channel
        do {
            channel = try await bootstrap.bind(unixDomainSocketPath: staging).get()
        } catch {
            throw SidecarError.bindFailed(listener: what, address: path, reason: "\(error)")
        }
        chmod(staging, mode_t(mode ?? 0o600))
        guard rename(staging, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(staging)
            try? await channel.close()
            throw SidecarError.bindFailed(listener: what, address: path, reason: reason)
        }
        // Remove the file when the listener closes, but only if it is still the one bound here:
        // a rebind of the same path (any change to the upstream) may have replaced it by the
        // time this channel has finished closing.
        var bound = stat()
        let identity = lstat(path, &bound) == 0 ? (device: bound.st_dev, inode: bound.st_ino) : nil
        channel.closeFuture.whenComplete { _ in
            var current = stat()
            guard let identity, lstat(path, &current) == 0,
                  current.st_dev == identity.device, current.st_ino == identity.inode else { return }
            unlink(path)
        }
        logger.info("listening", metadata: ["listener": "\(what)", "address": "unix:\(path)",
                                            "mode": "\(String(mode ?? 0o600, radix: 8))"])
        return channel
    }
}

/// Why a listening socket could not be set up (the caller names the listener and address).
struct ListenerSocketError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
