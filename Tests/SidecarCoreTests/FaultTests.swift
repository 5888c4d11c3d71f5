import Foundation
import NIOConcurrencyHelpers
import Testing
@testable import ConsulAgent
import DevAgent
@testable import SidecarCore
import SidecarTLS

/// Failures around the sidecars: the local app, and one of two storage instances.
@Suite("Faults", .serialized)
struct FaultTests {
    @Test("Local app down: each client is closed with one local_connect_failed line and metric (no retries); app back: traffic flows again")
    func localAppDown() async throws {
        let mesh = try await MeshFixture.start(backend: .echo)
        defer { Task { await mesh.stop() } }
        let appPort = mesh.backend.port
        #expect(await echoRoundTrip(port: mesh.upstreamPort))
        await mesh.backend.stop()
        for _ in 0..<5 {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 10)
            socket.send(Array("lost".utf8))
            let reply = await onThread { socket.receiveAll() }
            #expect(reply.count == 0, "nothing comes back from an app that is down")
        }
        #expect(await eventually { mesh.storageAudit.events.filter { $0.kind == .localConnectFailed }.count == 5 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(mesh.storageAudit.events.filter { $0.kind == .localConnectFailed }.count == 5, "one attempt per client, no retry storm")
        let line = try #require(mesh.storageAudit.events.first { $0.kind == .localConnectFailed })
        #expect(line.source?.hasSuffix("/svc/backup-agent") == true)
        #expect(line.reason?.contains("\(appPort)") == true, "\(line.reason ?? "")")
        let exposition = try #require(mesh.storage.settings.metrics).exposition()
        #expect(exposition.contains(#"backup_sidecar_connections_total{listener="public",outcome="failed"} 5"#), "\(exposition)")

        let revived = try await TestBackend(.echo, group: testGroup, port: appPort)
        defer { Task { await revived.stop() } }
        #expect(await echoRoundTrip(port: mesh.upstreamPort))
        #expect(revived.connections == 1)
    }

    @Test("One of two storage instances dies mid-run: only its streams fail, the other's finish intact, new connections go to the survivor")
    func instanceKilledMidRun() async throws {
        let setup = try await ConsulTwoInstances.start(try await ConsulMesh.start())
        defer { Task { await setup.stop() } }
        let upstreamPort = setup.upstreamPort, backend1 = setup.backends[0], backend2 = setup.backends[1]
        #expect(await setup.ready())

        // Four paced transfers, spread over both instances in turn.
        let chunks = 40, pauseMs: UInt32 = 50
        var transfers: [Task<(sent: String, received: String, count: Int, clean: Bool), Never>] = []
        for _ in 0..<4 {
            let socket = try BlockingSocket(port: upstreamPort)
            socket.setReceiveTimeout(seconds: 20)
            transfers.append(Task { await onThread { LifecycleTests.pacedRoundTrip(socket, chunks: chunks, pauseMs: pauseMs) } })
        }
        #expect(await eventually { backend1.connections == 2 && backend2.connections == 2 })
        try await Task.sleep(for: .milliseconds(500))
        // storage-1 dies: listener gone, its connections cut (drain with no grace).
        await setup.storages[0].drain(timeout: .zero)
        var newConnections = 0
        for _ in 0..<6 where await echoRoundTrip(port: upstreamPort, bytes: 4 << 10) { newConnections += 1 }
        let results = await withTaskGroup(of: (sent: String, received: String, count: Int, clean: Bool).self) { group in
            for transfer in transfers { group.addTask { await transfer.value } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let intact = results.filter { $0.clean && $0.sent == $0.received && $0.count == chunks * (256 << 10) }
        #expect(intact.count == 2, "storage-2's two transfers finish intact: \(results.map { ($0.count, $0.clean) })")
        #expect(results.filter { !$0.clean }.count == 2, "storage-1's two are cut (reset, never a clean end)")
        #expect(newConnections == 6, "every new connection succeeds on the survivor")
        #expect(backend2.connections == 2 + 6)
    }
}
