import Foundation
import NIOConcurrencyHelpers
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport

/// Real TLS over real sockets: agent -> upstream listener -> mTLS -> public listener -> backend.
@Suite("Tunnel", .serialized)
struct TunnelTests {
    @Test("256 MiB each way, sha256 equal at both ends")
    func bulkBothWays() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let size = 256 << 20
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            async let received = onThread { socket.receiveAll() }
            let sent = await onThread { () -> (sent: Int, sha256: String) in
                let result = RandomStream.send(socket, bytes: size)
                socket.shutdownWrite()
                return result
            }
            let echo = await received
            #expect(sent.sent == size)
            #expect(echo.count == size)
            #expect(echo.sha256 == sent.sha256)
            #expect(echo.cleanEOF)
            #expect(mesh.backend.bytesReceived == size)
            // Both sides audit the close with exact byte counts.
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .connectionClosed } })
            let closed = try #require(mesh.storageAudit.events.first { $0.kind == .connectionClosed })
            #expect(closed.bytesIn == size)
            #expect(closed.bytesOut == size)
        }
    }

    @Test("Half-close: the client shuts its write side and the whole reply still arrives")
    func halfClose() async throws {
        let replyBytes = 24 << 20
        let mesh = try await MeshFixture.start(backend: .replyAfterEOF(replyBytes: replyBytes))
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            let request = await onThread { () -> (sent: Int, sha256: String) in
                let result = RandomStream.send(socket, bytes: 3 << 20)
                socket.shutdownWrite()
                return result
            }
            let reply = await onThread { socket.receiveAll(keepingPrefix: 64) }
            #expect(reply.cleanEOF)
            #expect(String(decoding: reply.prefix, as: UTF8.self) == request.sha256, "backend saw exactly what was sent")
            #expect(reply.count == 64 + replyBytes)
            #expect(mesh.backend.sentReplyDigests == [reply.sha256])
        }
    }

    @Test("Many short connections in parallel all round-trip")
    func manyShortConnections() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        await withTeardown({ await mesh.stop() }) {
            let port = mesh.upstreamPort
            let results = await withTaskGroup(of: Bool.self) { group in
                for index in 0..<64 {
                    group.addTask {
                        await onThread {
                            guard let socket = try? BlockingSocket(port: port) else { return false }
                            let payload = Array("connection \(index)\n".utf8)
                            socket.send(payload)
                            socket.shutdownWrite()
                            let reply = socket.receiveAll(keepingPrefix: payload.count)
                            return reply.prefix == payload && reply.cleanEOF
                        }
                    }
                }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.count == 64)
            #expect(results.allSatisfy { $0 })
            #expect(mesh.backend.connections == 64)
        }
    }

    /// Measured as bytes in flight (sent by the client, not yet read by the backend) rather than
    /// the test process's RSS, which other suites running in parallel move by hundreds of MiB.
    /// Everything the two sidecars could buffer is part of the in-flight bytes, so a bound on
    /// them bounds the sidecars' memory too; without backpressure the client would get its whole
    /// gigabyte into the sidecar's buffers within the 4 seconds.
    @Test("A slow reader holds the sender back: bytes in flight stay bounded")
    func slowReaderBoundedMemory() async throws {
        // The backend drains 64 KiB every 20 ms (~3 MiB/s) while the client offers up to 1 GiB.
        let mesh = try await MeshFixture.start(backend: .slowSink(bytesPerTick: 64 * 1024, tick: .milliseconds(20)))
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            let offered = 1 << 30
            let stop = NIOLockedValueBox(false)
            let sentSoFar = NIOLockedValueBox(0)
            let sender = Thread {
                let chunk = secureRandomBytes(1 << 20)
                while sentSoFar.withLockedValue({ $0 }) < offered && !stop.withLockedValue({ $0 }) {
                    guard socket.send(chunk) else { break }
                    sentSoFar.withLockedValue { $0 += chunk.count }
                }
            }
            sender.start()
            // The 4 s window starts once bytes reach the backend, not while the tunnel is set up.
            #expect(await eventually { mesh.backend.bytesReceived > 0 })
            var peakInFlight = 0
            for _ in 0..<40 { // 4 seconds
                try await Task.sleep(for: .milliseconds(100))
                let inFlight = sentSoFar.withLockedValue { $0 } - mesh.backend.bytesReceived
                peakInFlight = max(peakInFlight, inFlight)
            }
            stop.withLockedValue { $0 = true }
            shutdown(socket.fd, Int32(SHUT_RDWR))
            let consumed = mesh.backend.bytesReceived
            #expect(consumed > 1 << 20, "the slow reader did receive data")
            #expect(consumed < 64 << 20, "the reader really was slow")
            // Kernel socket buffers on six socket ends account for most of this; the sidecars
            // add at most a few records each.
            #expect(peakInFlight < 64 << 20, "\(peakInFlight >> 20) MiB in flight while 1 GiB was offered")
        }
    }
}
