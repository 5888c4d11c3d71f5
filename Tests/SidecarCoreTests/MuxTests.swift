import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarMux
@testable import SidecarTLS
import TestSupport

/// The multiplexed transport between two sidecars: tunnels as HTTP/2 CONNECT streams on pooled
/// mTLS connections (issue 6). The rest of the suite runs through the mux too (it is the
/// default); these tests check what only the mux has.
@Suite("Mux transport", .serialized)
struct MuxTests {
    static func lines(_ audit: MemoryAuditSink, _ kind: AuditEvent.Kind) -> [AuditEvent] {
        audit.events.filter { $0.kind == kind }
    }

    /// A storage and a backup-agent sidecar whose mux settings differ.
    struct MixedPair {
        let backend: TestBackend
        let storage: Sidecar, storageAudit: MemoryAuditSink
        let agent: Sidecar, agentAudit: MemoryAuditSink
        var port: Int { agent.boundAddress(of: "upstream:storage")!.port! }
        func stop() async {
            await agent.stop()
            await storage.stop()
            await backend.stop()
        }
    }

    static func mixedPair(storage storageMux: MuxMode, agent agentMux: MuxMode) async throws -> MixedPair {
        let backend = try await TestBackend(.echo, group: testGroup)
        let (storage, storageAudit) = try await MeshFixture.startStorage(
            backendPort: backend.port, credentials: try TestCertificates.credentials("storage"),
            intentions: MeshFixture.allowBackupAgent, mux: storageMux)
        let (agent, agentAudit) = try await MeshFixture.startAgent(
            certificate: "backup-agent", storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!, mux: agentMux)
        return MixedPair(backend: backend, storage: storage, storageAudit: storageAudit, agent: agent, agentAudit: agentAudit)
    }

    @Test("1,000 short connections and 8 bulk streams at once: every byte sha256-correct, one handshake per pooled connection")
    func manyTunnelsFewHandshakes() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        await withTeardown({ await mesh.stop() }) {
            let port = mesh.upstreamPort
            let bulk = Task {
                await withTaskGroup(of: EchoResult.self) { group in
                    for _ in 0..<8 { group.addTask { await echoStream(port: port, bytes: 32 << 20, receiveTimeout: 60) } }
                    return await group.reduce(into: [EchoResult]()) { $0.append($1) }
                }
            }
            // 1,000 short connections, 40 at a time.
            let shortOK = await withTaskGroup(of: Bool.self) { group in
                var started = 0, succeeded = 0
                while started < 40 {
                    group.addTask { await echoRoundTrip(port: port, bytes: 4 << 10) }
                    started += 1
                }
                for await ok in group {
                    if ok { succeeded += 1 }
                    if started < 1000 {
                        group.addTask { await echoRoundTrip(port: port, bytes: 4 << 10) }
                        started += 1
                    }
                }
                return succeeded
            }
            let bulkResults = await bulk.value
            #expect(shortOK == 1000)
            #expect(bulkResults.count == 8 && bulkResults.allSatisfy { $0.ok }, "\(bulkResults.filter { !$0.ok })")

            // Every tunnel was decided on its own, as a stream; none needed a handshake of its own.
            #expect(await eventually { Self.lines(mesh.storageAudit, .connectionClosed).count == 1008 })
            let decisions = Self.lines(mesh.storageAudit, .authorization)
            #expect(decisions.count == 1008)
            #expect(decisions.allSatisfy { $0.muxStream != nil && $0.decision == "allow" && $0.handshakeMs == nil })
            let serverHandshakes = Self.lines(mesh.storageAudit, .muxConnected)
            let clientHandshakes = Self.lines(mesh.agentAudit, .muxConnected)
            #expect(serverHandshakes.count == clientHandshakes.count, "each pooled connection is one handshake, seen by both sides")
            #expect(!serverHandshakes.isEmpty && serverHandshakes.count <= 8,
                    "a few pooled connections (2 event loops, 100 streams each), not one per tunnel: \(serverHandshakes.count)")
            #expect(serverHandshakes.allSatisfy { $0.handshakeMs != nil })
            let upstream = Self.lines(mesh.agentAudit, .upstreamConnected)
            #expect(upstream.count == 1008 && upstream.allSatisfy { $0.muxStream != nil })
        }
    }

    @Test("The destination's stream limit is kept, and the next pooled connection is dialed before the current one is full")
    func streamLimitAndDialAhead() async throws {
        // The storage sidecar allows 4 streams per connection; the agent learns it from SETTINGS.
        let mesh = try await MeshFixture.start(backend: .echo, storageConfig: { $0.muxMaxStreams = 4 })
        try await withTeardown({ await mesh.stop() }) {
            var open: [BlockingSocket] = []
            for index in 0..<10 {
                let socket = try BlockingSocket(port: mesh.upstreamPort)
                socket.setReceiveTimeout(seconds: 30)
                #expect(await onThread { socket.echoes("tunnel \(index)\n") }, "tunnel \(index) was served without waiting")
                open.append(socket)
            }
            let counts = await mesh.agent.muxPoolCounts()
            #expect(counts.streams == 10)
            // 10 tunnels at 4 per connection need at least 3 connections; 75% use triggers one more
            // ahead of need on each event loop.
            #expect(counts.connections >= 4, "pooled connections: \(counts.connections)")
            // The agent counts a connection once its handshake is done, which (TLS 1.3) can be
            // before the storage side has audited its end of it.
            #expect(await eventually { await Self.lines(mesh.storageAudit, .muxConnected).count == mesh.agent.muxPoolCounts().connections },
                    "storage audited \(Self.lines(mesh.storageAudit, .muxConnected).count) of \(counts.connections)")
            withExtendedLifetime(open) {}
        }
    }

    @Test("Mux streams count toward max_connections: one past the limit is refused (503, audited) and the next slot serves again")
    func streamsCountTowardMaxConnections() async throws {
        // One event loop on the agent: exactly one pooled connection. max_connections 2 admits
        // two tunnels; the mux connection carrying them is transport and not one of them.
        // (storage's handshake timeout is 10 s: the half-open connection below outlives the test.)
        let agentLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let backend = try await TestBackend(.echo, group: testGroup)
        let (storage, storageAudit) = try await MeshFixture.startStorage(
            backendPort: backend.port, credentials: try TestCertificates.credentials("storage"),
            intentions: MeshFixture.allowBackupAgent, handshakeTimeoutMs: 600_000,
            // The half-open connection below sends nothing: neither the handshake nor the
            // first-byte timeout (5 s by default) may cut it while the test counts it.
            configure: { $0.maxConnections = 2; $0.firstByteTimeoutMs = 600_000 })
        let (agent, agentAudit) = try await MeshFixture.startAgent(
            certificate: "backup-agent", storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!, group: agentLoop)
        let port = agent.boundAddress(of: "upstream:storage")!.port!
        try await withTeardown({ await agent.stop(); await storage.stop(); await backend.stop(); try? await agentLoop.shutdownGracefully() }) {

            // A connection stuck before its handshake (one of a half-open flood) is no tunnel: it
            // must not take a legitimate stream's place.
            let halfOpen = try BlockingSocket(port: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
            #expect(await eventually { storage.openConnections(on: Sidecar.publicListenerName) == 1 })

            var served: [BlockingSocket] = []
            for index in 0..<2 {
                let socket = try BlockingSocket(port: port)
                socket.setReceiveTimeout(seconds: 30)
                #expect(await onThread { socket.echoes("tunnel \(index)\n") })
                served.append(socket)
            }
            #expect(storage.openConnections(on: Sidecar.publicListenerName) == 4, "two streams, their connection, the half-open one")

            let refused = try BlockingSocket(port: port)
            refused.setReceiveTimeout(seconds: 5)
            _ = refused.send(Array("over the limit\n".utf8))
            #expect(await onThread { refused.receiveAll() }.count == 0, "a tunnel past max_connections was served")
            let refusal = try #require(Self.lines(storageAudit, .tunnelRefused).first)
            #expect(refusal.reason == "max_connections (2) reached" && refusal.muxStream != nil && refusal.decision == "deny")
            #expect(refusal.source?.hasSuffix("/svc/backup-agent") == true)
            #expect(await eventually { Self.lines(agentAudit, .upstreamFailed).count == 1 })
            #expect(backend.connections == 2, "the refused tunnel reached the local app")

            // A slot frees when a tunnel ends; the next tunnel on the same connection is served.
            let first = served[0]
            first.shutdownWrite()
            _ = await onThread { first.receiveAll() }
            #expect(await eventually { storage.openConnections(on: Sidecar.publicListenerName) == 3 })
            let next = try BlockingSocket(port: port)
            next.setReceiveTimeout(seconds: 30)
            #expect(await onThread { next.echoes("next\n") })
            #expect(Self.lines(storageAudit, .muxConnected).count == 1)
            withExtendedLifetime((served, halfOpen)) {}
        }
    }

    @Test("A mux connection left without tunnels for idle_timeout goes away on both sides")
    func idleMuxConnectionCloses() async throws {
        // Its own event loop and 5 s: the counts right after the first tunnel must be read
        // before the idle close, which a stall of the suite's shared loops could bring forward.
        let mesh = try await MeshFixture.start(backend: .echo, ownEventLoop: true, storageConfig: { $0.idleTimeoutNs = 5_000_000_000 })
        try await withTeardown({ await mesh.stop() }) {
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(mesh.storage.openConnections(on: Sidecar.publicListenerName) >= 1)
            #expect(await eventually { mesh.storage.openConnections(on: Sidecar.publicListenerName) == 0 })
            #expect(await eventually { await mesh.agent.muxPoolCounts().connections == 0 }, "the agent's pooled connection closed too")
            let pool = try #require(mesh.agent.muxPool)
            #expect(await eventually { (try? await pool.destinationCount(on: mesh.group.next()).get()) == 0 },
                    "the pool forgets a destination it holds nothing for (instances come and go)")
            // The next tunnel simply gets a fresh connection.
            #expect(await echoRoundTrip(port: mesh.upstreamPort))
            #expect(try await pool.destinationCount(on: mesh.group.next()).get() == 1)
        }
    }

    @Test("Toward a sidecar with --mux off: plain mTLS connections, each with its own handshake, no failure")
    func fallsBackToRawSidecar() async throws {
        let pair = try await Self.mixedPair(storage: .off, agent: .prefer)
        await withTeardown({ await pair.stop() }) {
            let (port, storageAudit, agentAudit) = (pair.port, pair.storageAudit, pair.agentAudit)
            for _ in 0..<5 { #expect(await echoRoundTrip(port: port, bytes: 64 << 10)) }
            #expect(await echoStream(port: port, bytes: 8 << 20).ok)
            #expect(Self.lines(agentAudit, .muxConnected).isEmpty)
            #expect(Self.lines(storageAudit, .muxConnected).isEmpty)
            let decisions = Self.lines(storageAudit, .authorization)
            #expect(decisions.count == 6 && decisions.allSatisfy { $0.muxStream == nil && $0.handshakeMs != nil })
            #expect(Self.lines(agentAudit, .upstreamConnected).allSatisfy { $0.muxStream == nil })
        }
    }

    @Test("A mux-enabled public listener serves plain Connect TLS too (a --mux off sidecar)")
    func acceptsRawPeers() async throws {
        let pair = try await Self.mixedPair(storage: .prefer, agent: .off)
        await withTeardown({ await pair.stop() }) {
            let (port, storageAudit, agentAudit) = (pair.port, pair.storageAudit, pair.agentAudit)
            for _ in 0..<3 { #expect(await echoRoundTrip(port: port, bytes: 64 << 10)) }
            #expect(Self.lines(storageAudit, .muxConnected).isEmpty && Self.lines(agentAudit, .muxConnected).isEmpty)
            #expect(Self.lines(storageAudit, .authorization).count == 3)
        }
    }

    /// The ALPN protocol the public listener selects for a client offering `offer`.
    static func negotiated(_ offer: String, port: Int) async throws -> String {
        let run = try await ProcessRunner.run([
            "openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-alpn", offer,
            "-cert", TestCertificates.path("backup-agent.pem"), "-key", TestCertificates.path("backup-agent.key"),
            "-CAfile", TestCertificates.path("ca.pem"),
        ], input: Data(), timeout: 10)
        if run.output.contains("No ALPN negotiated") { return "none" }
        let line = run.output.split(separator: "\n").first { $0.hasPrefix("ALPN protocol:") }
        return line.map { String($0.dropFirst("ALPN protocol:".count)).trimmingCharacters(in: .whitespaces) } ?? "?"
    }

    @Test("The listener selects only the mux's ALPN id: never h2 (Consul #4466), and nothing with --mux off")
    func alpnSelection() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            #expect(try await Self.negotiated("h2", port: mesh.publicPort) == "none")
            #expect(try await Self.negotiated("h2,http/1.1", port: mesh.publicPort) == "none")
            #expect(try await Self.negotiated("h2,\(MuxProtocol.alpn)", port: mesh.publicPort) == MuxProtocol.alpn)
            let raw = try await MeshFixture.start(backend: .echo, mux: .off)
            try await withTeardown({ await raw.stop() }) {
                let negotiated = try await Self.negotiated(MuxProtocol.alpn, port: raw.publicPort)
                #expect(negotiated == "none")
            }
        }
    }

    @Test("Toward openssl s_server with client auth (no ALPN): the tunnel works raw")
    func fallsBackToOpenSSLServer() async throws {
        let port = freeLocalPort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        server.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", TestCertificates.path("storage.pem"),
                            "-key", TestCertificates.path("storage.key"), "-Verify", "2", "-CAfile", TestCertificates.path("ca.pem"),
                            "-rev", "-quiet"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.forceStop() }
        #expect(await eventually { (try? BlockingSocket(port: port)) != nil })
        let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: port, mux: .prefer)
        try await withTeardown({ await agent.stop() }) {
            let socket = try BlockingSocket(port: agent.boundAddress(of: "upstream:storage")!.port!)
            socket.setReceiveTimeout(seconds: 10)
            #expect(socket.send(Array("backup-sidecar\n".utf8)))
            // s_server -rev answers each line reversed.
            let reply = await onThread { socket.receiveExactly(15) }
            #expect(reply.map { String(decoding: $0, as: UTF8.self) } == "racedis-pukcab\n")
            let connected = Self.lines(agentAudit, .upstreamConnected)
            #expect(connected.count == 1 && connected[0].muxStream == nil)
            #expect(Self.lines(agentAudit, .muxConnected).isEmpty)
        }
    }

    @Test("A stalled reader holds back only its own stream: other tunnels on the same connection keep full speed")
    func slowReaderDoesNotStallOthers() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            let port = mesh.upstreamPort
            // The stalled client sends 16 MiB and reads nothing: the echo backs up into its stream.
            let stalled = try BlockingSocket(port: port)
            let sender = Task { await onThread { RandomStream.send(stalled, bytes: 16 << 20) } }
            try await Task.sleep(for: .milliseconds(500))
            // Connections are spread over the two event loops in turn, so at least one of these
            // shares the stalled tunnel's pooled connection.
            let others = await withTaskGroup(of: EchoResult.self) { group in
                for _ in 0..<3 { group.addTask { await echoStream(port: port, bytes: 32 << 20, receiveTimeout: 20) } }
                return await group.reduce(into: [EchoResult]()) { $0.append($1) }
            }
            #expect(others.allSatisfy { $0.ok }, "\(others.filter { !$0.ok })")
            #expect(!Self.lines(mesh.storageAudit, .muxConnected).isEmpty)
            // The stalled tunnel is still open, not cut to make room.
            #expect(mesh.storage.openInboundConnections >= 1)
            // Unblock the sender before the socket goes away: closing an fd another thread still
            // writes to would let it write into whatever reuses the number.
            shutdown(stalled.fd, Int32(SHUT_RDWR))
            _ = await sender.value
        }
    }

    @Test("An abort crosses the mux as a reset both ways; a half-close as END_STREAM")
    func resetsAndHalfClose() async throws {
        // Client aborts: the backend sees a reset, never a clean end of stream.
        let mesh = try await MeshFixture.start(backend: .replyAfterEOF(replyBytes: 1 << 20))
        try await withTeardown({ await mesh.stop() }) {
            let aborting = try BlockingSocket(port: mesh.upstreamPort)
            #expect(aborting.send(secureRandomBytes(256 << 10)))
            try await Task.sleep(for: .milliseconds(200))
            aborting.abort()
            #expect(await eventually { mesh.storageAudit.events.contains { $0.kind == .connectionClosed } })
            #expect(mesh.backend.sentReplyDigests.isEmpty, "an aborted upload never looks complete to the app")

            // Half-close: the reply still arrives in full after the client's END_STREAM.
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 10)
            #expect(socket.send(secureRandomBytes(64 << 10)))
            socket.shutdownWrite()
            let reply = await onThread { socket.receiveAll(keepingPrefix: 64) }
            #expect(reply.cleanEOF)
            #expect(reply.count == 64 + (1 << 20))
            #expect(!Self.lines(mesh.storageAudit, .muxConnected).isEmpty)

            // Backend aborts: the client sees a reset, not a clean EOF.
            let source = try await MeshFixture.start(backend: .abortAfter(bytes: 1 << 20))
            try await withTeardown({ await source.stop() }) {
                let reader = try BlockingSocket(port: source.upstreamPort)
                reader.setReceiveTimeout(seconds: 10)
                #expect(reader.send(Array("go\n".utf8)))
                let cut = await onThread { reader.receiveAll() }
                #expect(!cut.cleanEOF, "a transfer cut at the source must not look complete")
                #expect(cut.count <= 1 << 20)
            }
        }
    }
}
