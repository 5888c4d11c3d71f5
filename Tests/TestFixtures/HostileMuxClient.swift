import NIOCore
import NIOPosix
import TestSupport
@testable import SidecarCore
@testable import SidecarMux
@testable import SidecarTLS
@testable import SidecarModel

/// A peer speaking the mux directly to a storage sidecar's public listener, with whatever
/// certificate a test gives it, and opening streams whenever the test says: it does not
/// behave (it keeps opening streams after GOAWAY, after its leaf expired, after denials).
package struct HostileMuxClient {
    package let channel: Channel
    package let handler: MuxConnectionHandler

    package static func connect(port: Int, credentials: TLSCredentials, group: EventLoopGroup = testGroup) async throws -> HostileMuxClient {
        let loop = group.next()
        let context = try TLSContext(role: .client, credentials: credentials, applicationProtocols: [MuxProtocol.alpn])
        let expected = SPIFFEID(trustDomain: TestCertificates.trustDomain, datacenter: "dc1", service: "storage")
        let waiter = HandshakeWaiter(promise: loop.makePromise())
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(TLSHandler(context: context, expectedPeer: expected), waiter)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let peer = try await waiter.handshake.get()
        guard peer.applicationProtocol == MuxProtocol.alpn else { throw MuxError.streamRefused("no mux") }
        let handler = MuxConnectionHandler(role: .client, settings: MuxSettings())
        try await loop.submit { try waiter.handOver(to: [handler]) }.get()
        return HostileMuxClient(channel: channel, handler: handler)
    }

    /// Opens a stream to `authority`; the stream's channel once answered 200, else the error.
    package func open(authority: String = "storage") async -> Result<Channel, Error> {
        let handler = self.handler
        do {
            return .success(try await channel.eventLoop.flatSubmit { handler.openStream(authority: authority) }.get())
        } catch {
            return .failure(error)
        }
    }

    package func close() async { try? await channel.close() }

    /// Connects as backup-agent, opens one stream to storage, and runs `body` with it; the
    /// connection is closed after. A refused stream throws.
    package static func withStream<T>(port: Int, group: EventLoopGroup, _ body: (Channel) async throws -> T) async throws -> T {
        let client = try await connect(port: port, credentials: TestCertificates.credentials("backup-agent"), group: group)
        return try await withTeardown({ await client.close() }) {
            try await body(try await client.open().get())
        }
    }
}
