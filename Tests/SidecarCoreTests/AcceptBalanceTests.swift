import Foundation
import NIOCore
import NIOPosix
@testable import SidecarCore
import Testing
import TestFixtures
import TestSupport

/// The public listener accepts on every event loop of a shared socket, one acceptor at a time,
/// on the least loaded loop. A mux connection's streams all run on its loop, so where its
/// connections land decides how many cores a single peer's transfers can use. The fixture's
/// sidecars run on two loops.
@Suite("Public listener: accepts balanced over event loops", .serialized)
struct AcceptBalanceTests {
    /// The clients' own loop: taking one from the sidecar's group would advance the
    /// round-robin that placed connections before, and could hide what this checks.
    static let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    static func loops(of entries: [ConnectionTable.Tracked]) -> [ObjectIdentifier] {
        entries.map { ObjectIdentifier($0.channel.eventLoop) }
    }

    @Test("A peer's two mux connections land on different loops, a health-check probe between them notwithstanding")
    func carriersSpread() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let credentials = try TestCertificates.credentials("backup-agent")
            let first = try await HostileMuxClient.connect(port: mesh.publicPort, credentials: credentials, group: Self.clientGroup)
            try await withTeardown({ await first.close() }) {
                #expect(await eventually { mesh.storageAudit.events.filter { $0.kind == .muxConnected }.count == 1 })
                // Consul's TCP check of the public port: connect and close. With round-robin
                // placement it shifts the next connection back onto the first one's loop.
                do { _ = try BlockingSocket(port: mesh.publicPort) }
                #expect(await eventually { mesh.storage.table.count(Sidecar.publicListenerName) == 1 }, "the probe is gone")
                let second = try await HostileMuxClient.connect(port: mesh.publicPort, credentials: credentials, group: Self.clientGroup)
                await withTeardown({ await second.close() }) {
                    #expect(await eventually { mesh.storage.table.channels.filter(\.isMuxCarrier).count == 2 })
                    let loops = Self.loops(of: mesh.storage.table.channels.filter(\.isMuxCarrier))
                    #expect(Set(loops).count == 2, "both mux connections are on one loop")
                }
            }
        }
    }

    @Test("64 connections at once on the shared socket: every one is accepted, one acceptor at a time, spread over both loops")
    func burstSpread() async throws {
        // Timeouts far beyond the test, so no silent connection is closed before it is counted.
        let mesh = try await MeshFixture.start(backend: .echo, handshakeTimeoutMs: 600_000,
                                               storageConfig: { $0.firstByteTimeoutMs = 600_000 })
        try await withTeardown({ await mesh.stop() }) {
            // Silent connections stay in their handshake (within the budget) until closed.
            let sockets = try (0..<64).map { _ in try BlockingSocket(port: mesh.publicPort) }
            #expect(await eventually { mesh.storage.table.handshaking(Sidecar.publicListenerName) == 64 },
                    "accepted \(mesh.storage.table.handshaking(Sidecar.publicListenerName)) of 64")
            let perLoop = Dictionary(grouping: Self.loops(of: mesh.storage.table.channels), by: { $0 }).mapValues(\.count)
            let counts = perLoop.values.sorted()
            // An acceptor takes at most one read's worth (NIO accepts up to 4 per wakeup) before
            // the table hands the socket over; 8 leaves room for a hand-off under load.
            #expect(counts.count == 2 && counts[1] - counts[0] <= 8, "per loop: \(counts)")
            for socket in sockets { socket.abort() }
            #expect(await eventually { mesh.storage.table.count(Sidecar.publicListenerName) == 0 })
        }
    }

    @Test("With acceptors on every loop: at max_connections all pause, a new peer waits in a backlog of 1024, and is taken when one closes")
    func limitsStillHold() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, storageConfig: { $0.maxConnections = 2 })
        try await withTeardown({ await mesh.stop() }) {
            let credentials = try TestCertificates.credentials("backup-agent")
            let first = try await HostileMuxClient.connect(port: mesh.publicPort, credentials: credentials, group: Self.clientGroup)
            let second = try await HostileMuxClient.connect(port: mesh.publicPort, credentials: credentials, group: Self.clientGroup)
            #expect(await eventually { mesh.storage.table.isPaused(Sidecar.publicListenerName) }, "2 of 2: paused")
            // NIO listens again on a socket it wraps, with its own backlog of 128; ours must stand.
            let somaxconn = Int((try? String(contentsOfFile: "/proc/sys/net/core/somaxconn", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 4096
            let listening = try await ProcessRunner.run(["ss", "-Hltn", "sport = :\(mesh.publicPort)"])
            let backlog = listening.output.split(whereSeparator: \.isWhitespace).dropFirst(2).first.flatMap { Int($0) }
            #expect(backlog == min(1024, somaxconn), "ss: \(listening.output)")

            let waiting = try BlockingSocket(port: mesh.publicPort)
            #expect(mesh.storage.table.count(Sidecar.publicListenerName) == 2, "paused: the new peer is not accepted")
            await first.close()
            #expect(await eventually { mesh.storage.table.handshaking(Sidecar.publicListenerName) == 1 },
                    "the waiting peer is accepted once a mux connection closed")
            _ = waiting
            await second.close()
        }
    }

    @Test("An acceptor that dies hands the socket on; once every one has died, the sidecar is not ready")
    func acceptorDeaths() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let acceptors = mesh.storage.publicAcceptors
            #expect(acceptors.count == 2)
            #expect(mesh.storage.readiness.ready)
            // What NIO does to an acceptor on EPERM or EPROTO from accept(2).
            try await acceptors[0].close()
            let credentials = try TestCertificates.credentials("backup-agent")
            let client = try await HostileMuxClient.connect(port: mesh.publicPort, credentials: credentials, group: Self.clientGroup)
            #expect(await eventually { mesh.storage.table.channels.filter(\.isMuxCarrier).count == 1 }, "accepted by the other acceptor")
            await client.close()
            #expect(mesh.storage.readiness.ready, "one acceptor left: still accepting")
            try await acceptors[1].close()
            let readiness = mesh.storage.readiness
            #expect(!readiness.ready && readiness.reason == "public listener not accepting: every acceptor closed")
        }
    }

    @Test("A public listener the registration asks for but that could not bind (or is moving) keeps the sidecar not ready")
    func unboundPublicListenerNotReady() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            #expect(mesh.agent.readiness.ready, "upstream listeners only: ready")
            let squatter = try await ServerBootstrap(group: Self.clientGroup).bind(host: "127.0.0.1", port: 0).get()
            let taken = try #require(squatter.localAddress?.port)
            var definition = mesh.agent.definition
            definition.port = taken
            definition.localServicePort = 9
            await #expect(throws: (any Error).self) { try await mesh.agent.apply(definition) }
            let readiness = mesh.agent.readiness
            #expect(!readiness.ready && readiness.reason == "public listener not bound at 127.0.0.1:\(taken)", "\(readiness)")
            try await squatter.close()
            definition.port = freeLocalPort()
            try await mesh.agent.apply(definition)
            #expect(mesh.agent.readiness.ready, "bound at the new address: ready again")
        }
    }
}
