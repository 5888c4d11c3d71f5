import Logging
import NIOConcurrencyHelpers
import NIOCore
import SidecarModel

/// One upstream's local listener: its socket, the upstream it was bound for, and the settings
/// its connections start with (one snapshot, replaced whole when the registration's timeouts
/// change; each connection reads it once, when accepted).
final class UpstreamListener: Sendable {
    let upstream: Upstream
    let channel: Channel
    private let current: NIOLockedValueBox<UpstreamRoute>
    private let table: ConnectionTable

    private init(upstream: Upstream, channel: Channel, current: NIOLockedValueBox<UpstreamRoute>, table: ConnectionTable) {
        self.upstream = upstream
        self.channel = channel
        self.current = current
        self.table = table
    }

    /// Timeouts and limits as the registration says now, for connections accepted from now on.
    func update(_ config: ProxyConfig) {
        current.withLockedValue { $0.apply(config) }
        table.configure(upstream.listenerName, maxConnections: config.maxConnections)
    }

    /// `route` is built from the registration in force, whose `max_connections` is given too.
    static func bind(_ upstream: Upstream, route: UpstreamRoute, maxConnections: Int, table: ConnectionTable,
                     audit: any AuditSink, logger: Logger, group: EventLoopGroup) async throws -> UpstreamListener {
        let current = NIOLockedValueBox(route)
        let listenerName = upstream.listenerName
        table.configure(listenerName, maxConnections: maxConnections)
        let bootstrap = ListenerSocket.bootstrap(group: group) { channel in
            let route = current.withLockedValue { $0 }
            let connectionID = ConnectionID.next()
            table.trackTunnel(channel, listener: listenerName, connectionID: connectionID)
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandlers(
                    PendingWriteCompactor(),
                    OrderedHalfCloseHandler(),
                    UpstreamConnectionHandler(route: route, connectionID: connectionID, table: table,
                                              audit: audit, logger: logger))
            }
        }
        let channel: Channel
        if let socketPath = upstream.localBindSocketPath {
            channel = try await ListenerSocket.bindUnixSocket(bootstrap, path: socketPath, mode: upstream.localBindSocketMode,
                                                              what: listenerName, group: group, logger: logger)
        } else {
            channel = try await ListenerSocket.bind(bootstrap, host: upstream.localBindAddress, port: upstream.localBindPort,
                                                    what: listenerName, logger: logger)
        }
        return UpstreamListener(upstream: upstream, channel: channel, current: current, table: table)
    }

    /// Returns once the channel has closed and its socket file (unix) is gone: NIO completes
    /// close() before the closeFuture callbacks run, and a rebind of the path follows at once.
    func close() async {
        try? await channel.close()
        try? await channel.closeFuture.get()
    }
}

extension UpstreamRoute {
    /// The registration's timeouts.
    mutating func apply(_ config: ProxyConfig) {
        handshakeTimeout = .milliseconds(Int64(config.handshakeTimeoutMs))
        idleTimeout = config.idleTimeoutNs.map { .nanoseconds($0) }
    }
}
