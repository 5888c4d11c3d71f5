import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
@testable import SidecarCore
import Testing
import TestFixtures
import TestSupport

/// The table on a real listening socket: pausing is observed as connections left waiting in
/// the kernel's backlog and accepted later, eviction as a client seeing its connection end.
@Suite("Connection limits and the handshake budget")
struct ConnectionTableTests {
    /// A plain TCP listener whose accepted connections the table registers as the sidecar's
    /// listeners do: as tunnels, or as pending handshakes (with the progress handler first).
    final class Listener: Sendable {
        let table: ConnectionTable
        let channel: Channel
        let name = "test"
        var port: Int { channel.localAddress!.port! }

        init(table: ConnectionTable, handshaking: Bool, maxConnections: Int = .max, handshakeBudget: Int = .max) async throws {
            self.table = table
            table.configure("test", maxConnections: maxConnections, handshakeBudget: handshakeBudget)
            channel = try await ServerBootstrap(group: testGroup)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { child in
                    if handshaking {
                        if let evicted = table.trackHandshaking(child, listener: "test", connectionID: ConnectionID.next()) { evicted.close(promise: nil) }
                        return child.pipeline.addHandler(HandshakeProgressHandler(table: table))
                    }
                    table.trackTunnel(child, listener: "test", connectionID: ConnectionID.next())
                    return child.eventLoop.makeSucceededVoidFuture()
                }
                .bind(host: "127.0.0.1", port: 0).get()
        }

        var accepted: Int { table.count(name) }
        var paused: Bool { table.isPaused(name) }
        var spokenCount: Int { table.channels.filter { $0.spoke }.count }
        /// The accepted connections by client port (an ObjectIdentifier can be reused by the
        /// next channel once a closed one is freed).
        var channelIDs: Set<Int> { Set(table.channels.compactMap { $0.channel.remoteAddress?.port }) }

        func connect() throws -> BlockingSocket {
            let socket = try BlockingSocket(port: port)
            socket.setReceiveTimeout(seconds: 30)
            return socket
        }

        /// Connects and sends one byte, then waits until the table has seen it.
        func connectSpeaking() async throws -> BlockingSocket {
            let before = spokenCount
            let socket = try connect()
            socket.send([0x16])
            #expect(await eventually(timeout: 30) { self.spokenCount == before + 1 }, "the first byte was seen")
            return socket
        }

        func close() async { try? await channel.close() }
    }

    /// True when the server ended the connection (EOF or reset) well within the client's
    /// 30 s receive timeout.
    static func wasClosed(_ socket: BlockingSocket) async -> Bool {
        let started = ContinuousClock.now
        let end = await onThread { socket.receiveAll() }
        return end.count == 0 && ContinuousClock.now - started < .seconds(25)
    }

    @Test("At max_connections a listener stops accepting; the next connection waits and is accepted when one closes")
    func pauseAndResume() async throws {
        let listener = try await Listener(table: ConnectionTable(), handshaking: false, maxConnections: 2)
        let first = try listener.connect(), second = try listener.connect()
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.paused })
        let third = try listener.connect()
        let before = listener.channelIDs
        first.abort()
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.channelIDs != before && listener.paused },
                "the waiting connection was accepted in the freed slot: accepted \(listener.accepted), changed \(listener.channelIDs != before), paused \(listener.paused)")
        _ = (second, third)
        await listener.close()
    }

    @Test("A limit raised at runtime resumes a paused listener; a lowered one pauses it until closes bring it under")
    func runtimeLimitChanges() async throws {
        let listener = try await Listener(table: ConnectionTable(), handshaking: false, maxConnections: 1)
        var clients = [try listener.connect()]
        #expect(await eventually(timeout: 30) { listener.accepted == 1 && listener.paused })
        clients.append(try listener.connect())
        listener.table.configure(listener.name, maxConnections: 3)
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && !listener.paused }, "raised: the waiting one is accepted")
        clients.append(try listener.connect())
        #expect(await eventually(timeout: 30) { listener.accepted == 3 && listener.paused })

        listener.table.configure(listener.name, maxConnections: 2)
        #expect(listener.paused)
        clients.removeFirst().abort()
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.paused }, "2 open, limit 2: still paused")
        clients.removeFirst().abort()
        #expect(await eventually(timeout: 30) { listener.accepted == 1 && !listener.paused }, "under the lowered limit: accepting again")
        clients.append(try listener.connect())
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.paused })
        await listener.close()
    }

    @Test("A full handshake budget: a silent connection loses its slot to a newcomer, one that spoke keeps it")
    func silentIsEvictedFirst() async throws {
        let table = ConnectionTable(staleHandshake: .seconds(600), silentGrace: .zero)
        let listener = try await Listener(table: table, handshaking: true, handshakeBudget: 2)
        let speaking = try await listener.connectSpeaking()
        let silent = try listener.connect()
        #expect(await eventually(timeout: 30) { listener.accepted == 2 })
        let newcomer = try listener.connect()
        #expect(await Self.wasClosed(silent), "the silent connection was closed")
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.table.handshaking(listener.name) == 2 })
        #expect(listener.spokenCount == 1, "the one that spoke is still open")
        _ = (speaking, newcomer)
        await listener.close()
    }

    @Test("Young handshakes that are all progressing pause accepting instead of being thrown away")
    func youngHandshakesPause() async throws {
        let table = ConnectionTable(staleHandshake: .seconds(600), silentGrace: .seconds(600))
        let listener = try await Listener(table: table, handshaking: true, handshakeBudget: 2)
        let first = try await listener.connectSpeaking()
        let second = try await listener.connectSpeaking()
        #expect(await eventually(timeout: 30) { listener.paused })
        let waiting = try listener.connect()
        #expect(listener.accepted == 2)
        first.abort()
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.spokenCount == 1 },
                "the waiting connection took the freed slot; the second was not evicted for it")
        #expect(await eventually(timeout: 30) { listener.paused })
        _ = (second, waiting)
        await listener.close()
    }

    @Test("A listener paused on young handshakes looks again when the oldest goes stale and gives its slot away")
    func staleHandshakeLosesSlot() async throws {
        let table = ConnectionTable(staleHandshake: .milliseconds(300), silentGrace: .seconds(600))
        let listener = try await Listener(table: table, handshaking: true, handshakeBudget: 2)
        let oldest = try await listener.connectSpeaking()
        let younger = try await listener.connectSpeaking()
        let newcomer = try listener.connect()
        #expect(await Self.wasClosed(oldest), "the stale handshake was closed for the newcomer")
        #expect(await eventually(timeout: 30) { listener.accepted == 2 })
        _ = (younger, newcomer)
        await listener.close()
    }

    @Test("Mux streams are admitted only below max_connections tunnels; carriers pause accepting but are not tunnels")
    func streamsAgainstTunnels() async throws {
        let table = ConnectionTable()
        let listener = try await Listener(table: table, handshaking: true, maxConnections: 2)
        let carrier = try listener.connect()
        #expect(await eventually(timeout: 30) { listener.accepted == 1 })
        let carrierChannel = try #require(table.channels.first?.channel)
        table.classify(carrierChannel, as: .muxCarrier)
        let streams = (0..<3).map { _ in EmbeddedChannel() }
        #expect(table.admit(streams[0], listener: listener.name, connectionID: ConnectionID.next()))
        #expect(await eventually(timeout: 30) { listener.paused }, "carrier + stream = 2 established")
        #expect(table.admit(streams[1], listener: listener.name, connectionID: ConnectionID.next()), "one tunnel so far: a second is admitted")
        #expect(!table.admit(streams[2], listener: listener.name, connectionID: ConnectionID.next()), "two tunnels: the third is refused")
        try await streams[0].close()
        streams[0].embeddedEventLoop.run()
        #expect(await eventually(timeout: 30) { listener.accepted == 2 && listener.paused }, "carrier + 1 stream: still at the limit")
        #expect(table.admit(streams[2], listener: listener.name, connectionID: ConnectionID.next()))
        _ = carrier
        await listener.close()
    }

    @Test("max_connections changed at runtime reaches an upstream listener already bound: the waiting caller is served")
    func runtimeLimitReachesUpstreamListener() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        try await withTeardown({ await mesh.stop() }) {
            var definition = mesh.agent.definition
            definition.config.maxConnections = 1
            try await mesh.agent.apply(definition)
            let first = try BlockingSocket(port: mesh.upstreamPort)
            first.setReceiveTimeout(seconds: 30)
            #expect(await onThread { echoPing(first, "holds the only slot\n") })
            #expect(await eventually(timeout: 30) { mesh.agent.table.isPaused("upstream:storage") })
            let second = try BlockingSocket(port: mesh.upstreamPort)
            second.setReceiveTimeout(seconds: 60)
            let served = Task { await onThread { echoPing(second, "waits in the backlog\n") } }
            #expect(mesh.agent.table.count("upstream:storage") == 1, "paused: the second caller is not accepted")
            definition.config.maxConnections = 2
            try await mesh.agent.apply(definition)
            #expect(await served.value, "served once the raised limit reached the bound listener")
            _ = first
        }
    }
}
