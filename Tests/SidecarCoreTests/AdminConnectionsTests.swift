import Foundation
import NIOCore
@testable import SidecarHTTP
import NIOConcurrencyHelpers
import Testing
import TestFixtures
@testable import SidecarCore
import TestSupport

/// `/connections`: the live tunnels on each side, with who is at the other end, why they were
/// let in, and bytes that move while the tunnel is open.
@Suite("Admin /connections", .serialized)
struct AdminConnectionsTests {
    static func connections(_ port: Int) async throws -> [[String: Any]] {
        let response = try await AdminHTTP.get(port, "/connections")
        #expect(response.status == "200")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
        let list = try #require(report["connections"] as? [[String: Any]])
        #expect(report["count"] as? Int == list.count)
        return list
    }

    @Test("each side lists its open tunnel: peer identity, intention or caller, bytes so far, age; closed tunnels leave",
          arguments: [MuxMode.off, .prefer])
    func liveTunnels(mux: MuxMode) async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: mux)
        let servers = NIOLockedValueBox<[HTTPServer]>([])
        try await withTeardown({
            for server in servers.withLockedValue({ $0 }) { await server.stop() }
            await mesh.stop()
        }) {
            var admins: [Int] = []
            for sidecar in [mesh.storage, mesh.agent] {
                let admin = try await AdminServer.start(host: "127.0.0.1", port: 0, sidecar: sidecar,
                                                        metrics: sidecar.settings.metrics!, group: testGroup)
                servers.withLockedValue { $0.append(admin) }
                admins.append(admin.port)
            }
            #expect(try await Self.connections(admins[0]).isEmpty)

            let open = try BlockingSocket(port: mesh.upstreamPort)
            open.setReceiveTimeout(seconds: 10)
            #expect(await onThread { echoPing(open, "measured\n") })
            let inbound = try #require(try await Self.connections(admins[0]).first)
            #expect(inbound["direction"] as? String == "inbound" && inbound["listener"] as? String == "public")
            #expect((inbound["peer_spiffe_id"] as? String)?.hasSuffix("/svc/backup-agent") == true)
            #expect((inbound["intention"] as? String)?.contains("backup-agent") == true, "\(inbound)")
            #expect(inbound["bytes_from_mesh"] as? Int == 9 && inbound["bytes_to_mesh"] as? Int == 9)
            #expect((inbound["age_s"] as? Int).map { $0 >= 0 } == true && inbound["opened"] is String)
            #expect((inbound["mux_connection_id"] != nil) == (mux == .prefer))
            let upstream = try #require(try await Self.connections(admins[1]).first)
            #expect(upstream["direction"] as? String == "upstream" && upstream["listener"] as? String == "upstream:storage")
            #expect((upstream["peer_spiffe_id"] as? String)?.hasSuffix("/svc/storage") == true)
            #expect(upstream["bytes_to_mesh"] as? Int == 9 && upstream["bytes_from_mesh"] as? Int == 9)
            // The ids are the audit log's.
            let audited = mesh.storageAudit.events.first { $0.kind == .authorization }?.connectionID
            #expect(inbound["connection_id"] as? String == audited)

            // Bytes move while the tunnel is open.
            #expect(await onThread { echoPing(open, "and more\n") })
            #expect(try await Self.connections(admins[0]).first?["bytes_from_mesh"] as? Int == 18)

            open.shutdownWrite()
            _ = await onThread { open.receiveAll() }
            var emptied = false
            for _ in 0..<300 where !emptied {
                let storageSide = try await Self.connections(admins[0]), agentSide = try await Self.connections(admins[1])
                emptied = storageSide.isEmpty && agentSide.isEmpty
                if !emptied { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(emptied, "closed tunnels leave the list")
        }
    }
}
