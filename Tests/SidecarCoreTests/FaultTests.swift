import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing
import TestFixtures
@testable import ConsulAgent
@testable import DevAgent
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport

/// Failures around the sidecars: the local app, and one of two storage instances.
@Suite("Faults", .serialized)
struct FaultTests {
    @Test("Local app down: each client is closed with one local_connect_failed line and metric (no retries); app back: traffic flows again")
    func localAppDown() async throws {
        // The app's port stays ours the whole time (bound, not listening: connections are
        // refused), so no test running in parallel can pick it up while the app is "down".
        let (app, appPort) = reservedLoopbackPort()
        defer { close(app) }
        let (storage, storageAudit) = try await MeshFixture.startStorage(
            backendPort: appPort, credentials: try TestCertificates.credentials("storage"), intentions: MeshFixture.allowBackupAgent)
        let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                          storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
        try await withTeardown({ await agent.stop(); await storage.stop() }) {
            let upstreamPort = agent.boundAddress(of: "upstream:storage")!.port!

            for _ in 0..<5 {
                let socket = try BlockingSocket(port: upstreamPort)
                socket.setReceiveTimeout(seconds: 10)
                socket.send(Array("lost".utf8))
                let reply = await onThread { socket.receiveAll() }
                #expect(reply.count == 0, "nothing comes back from an app that is down")
            }
            #expect(await eventually { storageAudit.events.filter { $0.kind == .localConnectFailed }.count == 5 })
            try await Task.sleep(for: .milliseconds(300))
            #expect(storageAudit.events.filter { $0.kind == .localConnectFailed }.count == 5, "one attempt per client, no retry storm")
            let line = try #require(storageAudit.events.first { $0.kind == .localConnectFailed })
            #expect(line.source?.hasSuffix("/svc/backup-agent") == true)
            #expect(line.reason?.contains("\(appPort)") == true, "\(line.reason ?? "")")
            let exposition = try #require(storage.settings.metrics).exposition()
            #expect(exposition.contains(#"backup_sidecar_connections_total{listener="public",outcome="failed"} 5"#), "\(exposition)")

            // The app comes back on the same port: accept one connection and echo it.
            #expect(listen(app, 16) == 0)
            let served = Task {
                await onThread { () -> Bool in
                    let connection = accept(app, nil, nil)
                    guard connection >= 0 else { return false }
                    let peer = BlockingSocket(adopting: connection)
                    var received: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = buffer.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
                        if count <= 0 { break }
                        received += buffer[0..<count]
                    }
                    let sent = peer.send(received)
                    peer.shutdownWrite()
                    return sent
                }
            }
            #expect(await echoRoundTrip(port: upstreamPort))
            #expect(await served.value)
        }
    }

    @Test("One of two storage instances dies mid-run: only its streams fail, the other's finish intact, new connections go to the survivor")
    func instanceKilledMidRun() async throws {
        let setup = try await ConsulTwoInstances.start(try await ConsulMesh.start())
        try await withTeardown({ await setup.stop() }) {
            let upstreamPort = setup.upstreamPort, backend1 = setup.backends[0], backend2 = setup.backends[1]
            #expect(await setup.ready())

            // Four paced transfers, spread over both instances in turn; each stops halfway until
            // storage-1 has died, so none can finish first on a slow machine.
            let chunks = 40, pauseMs: UInt32 = 50
            let halfway = DispatchSemaphore(value: 0)
            var transfers: [Task<(sent: String, received: String, count: Int, clean: Bool), Never>] = []
            for _ in 0..<4 {
                let socket = try BlockingSocket(port: upstreamPort)
                socket.setReceiveTimeout(seconds: 20)
                transfers.append(Task { await onThread { LifecycleTests.pacedRoundTrip(socket, chunks: chunks, pauseMs: pauseMs, gate: halfway) } })
            }
            #expect(await eventually(timeout: 30) { backend1.connections == 2 && backend2.connections == 2 })
            #expect(await eventually(timeout: 30) { backend1.bytesReceived > 0 && backend2.bytesReceived > 0 })
            // storage-1 dies: listener gone, its connections cut (drain with no grace).
            await setup.storages[0].drain(timeout: .zero)
            for _ in 0..<4 { halfway.signal() }
            var newConnections = 0
            for _ in 0..<6 where await echoRoundTrip(port: upstreamPort, bytes: 4 << 10) { newConnections += 1 }
            let results = await withTaskGroup(of: (sent: String, received: String, count: Int, clean: Bool).self) { group in
                for transfer in transfers { group.addTask { await transfer.value } }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let intact = results.filter { $0.clean && $0.sent == $0.received && $0.count == chunks * (256 << 10) }
            #expect(intact.count == 2, "storage-2's two transfers finish intact: \(results.map { ($0.count, $0.clean) })")
            // (Whether the client saw the reset on send or on receive depends on timing, so the
            // check is on the bytes: a cut transfer never delivers everything.)
            #expect(results.filter { $0.count < chunks * (256 << 10) }.count == 2, "storage-1's two are cut short")
            #expect(newConnections == 6, "every new connection succeeds on the survivor")
            #expect(backend2.connections == 2 + 6)
        }
    }
}
