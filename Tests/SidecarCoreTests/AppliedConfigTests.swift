import Foundation
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
import TestSupport

/// A registration change reaches the upstream side too: its listeners read timeouts per
/// connection, and the mux pool dials new connections with the new settings. (Upstream
/// listeners used to keep what they were bound with; only inbound connections saw changes.)
@Suite("Registration changes reach upstream listeners and the mux pool", .serialized)
struct AppliedConfigTests {
    @Test("idle_timeout lowered on the agent's registration cuts an idle upstream tunnel opened afterwards")
    func upstreamIdleTimeout() async throws {
        // Its own event loop and 5 s: the first echo must come back before the timeout, which
        // a stall of the suite's shared loops could otherwise outlast.
        let mesh = try await MeshFixture.start(backend: .echo, ownEventLoop: true)
        try await withTeardown({ await mesh.stop() }) {
            var definition = mesh.agent.definition
            definition.config.idleTimeoutNs = 5_000_000_000
            try await mesh.agent.apply(definition)

            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 60)
            #expect(await onThread { echoPing(socket, "then silence\n") })
            // The storage side keeps its one-hour default: only the agent's new setting can cut it.
            let started = ContinuousClock.now
            let end = await onThread { () -> Int in
                var buffer = [UInt8](repeating: 0, count: 64)
                return buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, 0) }
            }
            #expect(end <= 0, "the idle tunnel was closed")
            #expect(ContinuousClock.now - started < .seconds(50), "by the idle timeout, not the test's receive timeout")
        }
    }

    @Test("mux_max_streams lowered on the agent's registration: new pooled connections carry one tunnel each")
    func upstreamMuxSettings() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            var definition = mesh.agent.definition
            definition.config.muxMaxStreams = 1
            try await mesh.agent.apply(definition)

            var sockets: [BlockingSocket] = []
            for index in 0..<4 {
                let socket = try BlockingSocket(port: mesh.upstreamPort)
                socket.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(socket, "tunnel \(index)\n") })
                sockets.append(socket)
            }
            // With the default (100 streams), two pools (one per event loop) would need two at most.
            let counts = await mesh.agent.muxPoolCounts()
            #expect(counts.streams == 4 && counts.connections == 4, "\(counts)")
            withExtendedLifetime(sockets) {}
        }
    }
}
