import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import SidecarMux

/// LoopMuxPool's own check of our leaf: a retry (a carrier that went away, a dial waited on)
/// can come after the leaf expired and before its renewal arrived.
@Suite("Mux pool and an expired leaf of ours")
struct MuxPoolExpiredLeafTests {
    /// Credentials that were valid in 2020 (expired.pem), used today.
    static func expiredContext() throws -> TLSContext {
        let pem = { (name: String) in Array(FileManager.default.contents(atPath: TestCertificates.path(name))!) }
        let credentials = try TLSCredentials(chain: Certificate.parsePEMBundle(pem("expired.pem"), source: "expired.pem"),
                                             privateKey: PrivateKey.parsePEM(pem("expired.key"), source: "expired.key"),
                                             trustedRoots: Certificate.parsePEMBundle(pem("ca.pem"), source: "ca.pem"),
                                             now: Date(timeIntervalSince1970: 1_590_000_000))
        return try TLSContext(role: .client, credentials: credentials)
    }

    @Test("A retry after our leaf expired dials nothing, fails with the earlier tries, and leaves no state behind")
    func retryAfterExpiry() throws {
        let context = try Self.expiredContext()
        let loop = EmbeddedEventLoop()
        let pool = LoopMuxPool(eventLoop: loop, audit: MemoryAuditSink(), logger: Logger(label: "test"))
        let dials = NIOLockedValueBox(0)
        let request = LoopMuxPool.Request(
            key: .init(endpoint: Endpoint(host: "127.0.0.1", port: 1), expected: "spiffe://test.consul/ns/default/dc/dc1/svc/storage"),
            tlsContext: { context }, authority: "storage", listener: "upstream:storage", openTimeout: .seconds(5),
            settings: MuxSettings(),
            dial: { _ in
                dials.withLockedValue { $0 += 1 }
                return loop.makeFailedFuture(ChannelError.connectTimeout(.seconds(1)))
            })
        let outcome = NIOLockedValueBox<Result<MeshLink, any Error>?>(nil)
        pool.link(request, retries: 2, tried: ["mux connection c1: connectionClosed"]).whenComplete { result in
            outcome.withLockedValue { $0 = result }
        }
        try loop.syncShutdownGracefully()
        guard case .failure(let error) = try #require(outcome.withLockedValue { $0 }) else {
            Issue.record("linked with an expired leaf")
            return
        }
        let expired = try #require(error as? ExpiredLeaf, "\(error)")
        #expect(expired.tried == ["mux connection c1: connectionClosed"])
        #expect(expired.description.contains("after 1 tries"), "\(expired)")
        #expect(dials.withLockedValue { $0 } == 0, "the peer would only refuse an expired leaf: no dial")
        #expect(pool.destinationCount == 0, "a refused request leaves no destination state")
    }
}
