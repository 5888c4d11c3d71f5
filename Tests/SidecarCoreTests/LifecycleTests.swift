import Foundation
import NIOConcurrencyHelpers
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport

/// Draining, connection limits and idle connections.
@Suite("Lifecycle and limits", .serialized)
struct LifecycleTests {
    /// Sends `chunks` x 256 KiB with a pause between them, then reads the echo back.
    /// `gate`: after `chunks / 2` chunks the sender waits for it (the test acts mid-transfer
    /// then, however slow the machine is).
    static func pacedRoundTrip(_ socket: BlockingSocket, chunks: Int, pauseMs: UInt32,
                               gate: DispatchSemaphore? = nil) -> (sent: String, received: String, count: Int, clean: Bool) {
        let digest = SHA256Digest()
        let reader = NIOLockedValueBox<(sha: String, count: Int, clean: Bool)?>(nil)
        let thread = Thread {
            let r = socket.receiveAll()
            reader.withLockedValue { $0 = (r.sha256, r.count, r.cleanEOF) }
        }
        thread.start()
        for index in 0..<chunks {
            if index == chunks / 2 { gate?.wait() }
            let chunk = secureRandomBytes(256 << 10)
            digest.update(chunk)
            socket.send(chunk)
            usleep(pauseMs * 1000)
        }
        socket.shutdownWrite()
        while reader.withLockedValue({ $0 }) == nil { usleep(5000) }
        let received = reader.withLockedValue { $0 }!
        return (digest.finalizeHex(), received.sha, received.count, received.clean)
    }

    @Test("Drain: in-flight transfers finish, new connections are refused, nothing is aborted")
    func drainLetsTransfersFinish() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            // The transfer stops halfway until the drain has begun and the late connection was
            // refused: the drain acts mid-transfer however slow the machine. The drain's grace
            // and the client's receive timeout are wide (a clean drain returns when the table
            // empties): in the suite's first wave, beside gigabyte transfers on the same two
            // event-loop threads, this test has taken up to 28 s.
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 60)
            let halfway = DispatchSemaphore(value: 0)
            let transfer = Task { await onThread { Self.pacedRoundTrip(socket, chunks: 24, pauseMs: 40, gate: halfway) } }
            var released = false
            defer { if !released { halfway.signal() } } // a failed check must not strand the sender
            // In flight means joined to the app: the mux connection alone (counted as soon as its
            // handshake is done) may still be waiting for the stream, which a drain would refuse.
            #expect(await eventually(timeout: 30) { mesh.backend.connections == 1 })
            let drain = Task { await mesh.storage.drain(timeout: .seconds(60)) }
            #expect(await eventually { mesh.storage.isDraining })
            try await Task.sleep(for: .milliseconds(100))

            // New connections are refused while the old one finishes.
            let late = try BlockingSocket(port: mesh.upstreamPort)
            late.setReceiveTimeout(seconds: 5)
            late.send(Array("late\n".utf8))
            #expect(await onThread { late.receiveAll() }.count == 0)

            halfway.signal()
            released = true
            let result = await transfer.value
            #expect(result.count == 24 * (256 << 10))
            #expect(result.sent == result.received)
            #expect(result.clean)
            #expect(await drain.value == 0, "nothing had to be aborted")
        }
    }

    @Test("Drain timeout: connections still open at the deadline are aborted with an audit line")
    func drainTimeout() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 30)
            #expect(await onThread { echoPing(socket, "long-lived\n") })
            let aborted = await mesh.storage.drain(timeout: .milliseconds(300))
            #expect(aborted == 1)
            #expect(!(await onThread { socket.receiveAll() }).cleanEOF)
            #expect(mesh.storageAudit.events.contains { $0.kind == .connectionRevoked && $0.reason == "drain timeout reached at shutdown" })
        }
    }

    @Test("Max connections: the next connection waits in the backlog and proceeds when one closes")
    func maxConnections() async throws {
        // Raw mode: max_connections counts TLS connections (a mux connection carries mux_max_streams).
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off, storageConfig: { $0.maxConnections = 2 })
        try await withTeardown({ await mesh.stop() }) {
            let first = try BlockingSocket(port: mesh.upstreamPort)
            let second = try BlockingSocket(port: mesh.upstreamPort)
            for socket in [first, second] {
                socket.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(socket, "hold\n") })
            }
            #expect(mesh.storage.openConnections(on: Sidecar.publicListenerName) == 2)

            let third = try BlockingSocket(port: mesh.upstreamPort)
            third.setReceiveTimeout(seconds: 10)
            let answered = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
            let waiting = Task { await onThread { () -> Bool in
                let ok = echoPing(third, "waiting\n")
                answered.withLockedValue { $0 = $0 ?? .now }
                return ok
            } }
            try await Task.sleep(for: .milliseconds(600))
            #expect(answered.withLockedValue { $0 } == nil, "the third connection was served beyond the limit")
            #expect(mesh.storage.openConnections(on: Sidecar.publicListenerName) == 2)

            first.shutdownWrite()
            _ = await onThread { first.receiveAll() }
            #expect(await waiting.value, "the waiting connection proceeds once a slot frees")
            #expect(mesh.backend.connections == 3)
        }
    }

    @Test("Idle connections are closed after idle_timeout; busy ones are not")
    func idleTimeout() async throws {
        // The idle timeout is a time limit by nature; two things keep a busy connection's 200 ms
        // ticks from ever looking like idleness. Its own event loop: on the suite's shared loops,
        // a parallel suite's work once held the ticks back for 2 s and the busy connection was
        // closed. And 4 s, 20 ticks. Raw mode: the count below is of TLS connections.
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off, ownEventLoop: true,
                                               storageConfig: { $0.idleTimeoutNs = 4_000_000_000 })
        try await withTeardown({ await mesh.stop() }) {
            // Each connection speaks as soon as it is made (its idle clock starts at once).
            var sockets: [BlockingSocket] = []
            for _ in 0..<2 {
                let socket = try BlockingSocket(port: mesh.upstreamPort)
                socket.setReceiveTimeout(seconds: 10)
                #expect(await onThread { echoPing(socket, "hello\n") })
                sockets.append(socket)
            }
            let idle = sockets[0], busy = sockets[1]
            // Keep `busy` talking every 200 ms, for at least 8.8 s and until the count below has
            // been read (once it stops it is idle too, and would be closed 4 s later), while
            // `idle` says nothing.
            let counted = NIOLockedValueBox(false)
            let busyTalking = Task { await onThread { () -> Bool in
                var index = 0
                while index < 44 || !counted.withLockedValue({ $0 }) {
                    guard echoPing(busy, "tick \(index)\n") else { return false }
                    index += 1
                    usleep(200_000)
                }
                return true
            } }
            let idleEnd = await onThread { idle.receiveAll() }
            #expect(idleEnd.count == 0)
            // The client's EOF can overtake the storage sidecar's own bookkeeping of the close
            // (seen with both cores busy): wait for it rather than read it at once.
            #expect(await eventually { mesh.storage.openConnections(on: Sidecar.publicListenerName) == 1 },
                    "the idle connection is gone and the busy one stays")
            counted.withLockedValue { $0 = true }
            #expect(await busyTalking.value, "the busy connection answered every tick")
        }
    }

    @Test("SIGTERM to the real binary during a transfer: the transfer completes and the process exits 0")
    func sigtermDrains() async throws {
        let backend = try await TestBackend(.echo, group: testGroup)
        try await withTeardown({ await backend.stop() }) {
            let (port, service) = SidecarBinary.storageService("drain.json", appPort: backend.port)
            let intentions = SidecarBinary.write("drain-intentions.json",
                #"[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Action":"allow"}]}]"#)
            let sidecar = try SidecarProcess(["run", "--admin-bind", "off", "--service-file", service, "--intentions-file", intentions,
                                              "--audit-log", "\(SidecarBinary.scratch)/drain-audit.jsonl"] + SidecarBinary.certs(),
                                             logName: "drain.log")
            #expect(await eventually { (try? BlockingSocket(port: port)) != nil })

            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: port)
            try await withTeardown({ await agent.stop() }) {
                let socket = try BlockingSocket(port: agent.boundAddress(of: "upstream:storage")!.port!)
                socket.setReceiveTimeout(seconds: 20)
                let transfer = Task { await onThread { Self.pacedRoundTrip(socket, chunks: 16, pauseMs: 50) } }
                // The transfer is in flight once it reached the app through the binary.
                #expect(await eventually { backend.bytesReceived > 0 })
                sidecar.sendTerminate()
                let result = await transfer.value
                #expect(result.count == 16 * (256 << 10))
                #expect(result.sent == result.received)
                let exited = await sidecar.exit().status
                #expect(exited == 0)
                #expect((try? BlockingSocket(port: port)) == nil, "the listener is closed")
            }
        }
    }
}
