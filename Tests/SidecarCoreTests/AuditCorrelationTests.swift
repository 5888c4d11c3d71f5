import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// `connection_id` joins every line about one tunnel (and `mux_connection_id` the tunnels of a
/// mux connection to its `mux_connected` line); intention, certificate and registration
/// changes get lines of their own.
@Suite("Audit correlation and lifecycle lines", .serialized)
struct AuditCorrelationTests {
    /// One echo round trip through the mesh, closed by the client.
    static func roundTrip(_ port: Int) async throws {
        let socket = try BlockingSocket(port: port)
        let echoed = await onThread { () -> Int in
            _ = socket.send(Array("hello".utf8))
            socket.shutdownWrite()
            return socket.receiveAll().count
        }
        #expect(echoed == 5)
    }

    static let tunnelKinds: Set<AuditEvent.Kind> = [.authorization, .upstreamConnected, .connectionClosed]

    @Test("each tunnel's lines share one connection_id, distinct per tunnel and per sidecar; mux tunnels name their carrier",
          arguments: [MuxMode.off, .prefer])
    func connectionIDs(mux: MuxMode) async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: mux)
        try await withTeardown({ await mesh.stop() }) {
            for _ in 0..<3 { try await Self.roundTrip(mesh.upstreamPort) }
            #expect(await eventually(timeout: 30) {
                mesh.storageAudit.events.count { $0.kind == .connectionClosed } == 3
                    && mesh.agentAudit.events.count { $0.kind == .connectionClosed } == 3
            })
            var allIDs = Set<String>()
            var carrierCount = 0
            for (audit, opening) in [(mesh.storageAudit, AuditEvent.Kind.authorization), (mesh.agentAudit, .upstreamConnected)] {
                let tunnelLines = audit.events.filter { Self.tunnelKinds.contains($0.kind) }
                #expect(tunnelLines.allSatisfy { $0.connectionID != nil }, "\(tunnelLines)")
                let byID = Dictionary(grouping: tunnelLines, by: { $0.connectionID ?? "" })
                #expect(byID.count == 3, "three tunnels, three ids")
                for (id, lines) in byID {
                    #expect(lines.map(\.kind) == [opening, .connectionClosed], "\(id): opened then closed, nothing else")
                    #expect(id.wholeMatch(of: #/[0-9a-f]{16}-[0-9]+/#) != nil, "\(id)")
                }
                let carriers = audit.events.filter { $0.kind == .muxConnected }
                if mux == .off {
                    #expect(carriers.isEmpty && tunnelLines.allSatisfy { $0.muxConnectionID == nil })
                } else {
                    // The pool keeps a connection per event loop: one or two carry the three tunnels.
                    let carrierIDs = Set(carriers.compactMap(\.connectionID))
                    #expect((1...2).contains(carriers.count) && carrierIDs.count == carriers.count)
                    #expect(tunnelLines.allSatisfy { $0.muxConnectionID.map(carrierIDs.contains) == true && $0.muxStream != nil }, "\(tunnelLines.map { "\($0.kind) \($0.muxConnectionID ?? "-") \($0.muxStream ?? -1)" }) \(carrierIDs)")
                    carrierCount += carriers.count
                    allIDs.formUnion(carrierIDs)
                }
                allIDs.formUnion(byID.keys)
            }
            #expect(allIDs.count == 6 + carrierCount, "no id is used twice, across both sidecars")
        }
    }

    @Test("intentions_updated, certificate_rotated and config_reloaded lines; a revocation names the tunnel it cut")
    func lifecycleLines() async throws {
        let mesh = try await MeshFixture.start(backend: .echo, mux: .off)
        try await withTeardown({ await mesh.stop() }) {
            // An open tunnel, then intentions that deny it.
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            _ = socket.send(Array("ping".utf8))
            #expect(await onThread { socket.receiveSome().count } == 4)
            let opened = try #require(mesh.storageAudit.events.first { $0.kind == .authorization })
            mesh.storage.updateIntentions(IntentionSet([Intention(destinationName: "storage", sourceName: "backup-agent", action: .deny)],
                                                       defaultAction: .deny))
            let updated = try #require(mesh.storageAudit.events.first { $0.kind == .intentionsUpdated })
            #expect(updated.intentions == 1 && updated.revoked == 1 && updated.listener.isEmpty && updated.connectionID == nil)
            let revoked = try #require(mesh.storageAudit.events.first { $0.kind == .connectionRevoked })
            #expect(revoked.connectionID == opened.connectionID, "the revocation names the tunnel it cut")
            let line = updated.jsonLine
            #expect(line.contains("\"event\":\"intentions_updated\"") && line.contains("\"intentions\":1,\"revoked\":1")
                    && !line.contains("\"listener\""), "\(line)")

            let credentials = try TestCertificates.credentials("storage")
            try mesh.storage.updateCredentials(credentials)
            let rotated = try #require(mesh.storageAudit.events.first { $0.kind == .certificateRotated })
            #expect(rotated.identity == credentials.identity.uri && rotated.serial == credentials.leaf.serialNumber
                    && rotated.previousSerial != nil && rotated.notAfter == credentials.leaf.notAfter && rotated.roots == credentials.trustedRoots.count)
            #expect(rotated.jsonLine.contains("\"not_after\":\"\(Timestamp.rfc3339(credentials.leaf.notAfter))\""))

            var definition = mesh.storage.definition
            definition.config.idleTimeoutNs = 60_000_000_000
            try await mesh.storage.apply(definition)
            let reloaded = try #require(mesh.storageAudit.events.first { $0.kind == .configReloaded })
            #expect(reloaded.decision == "applied" && reloaded.reason == "changed: proxy config" && reloaded.destination == definition.name)
        }
    }

    @Test("what a registration change changed, named for its audit line")
    func describeChange() {
        let base = ProxyDefinition(id: "p", name: "p", address: "127.0.0.1", port: 21000, destinationServiceName: "s",
                                   destinationServiceID: nil, localServiceAddress: "127.0.0.1", localServicePort: 8080,
                                   config: ProxyConfig(), upstreams: [])
        #expect(Sidecar.describeChange(from: base, to: base) == "no change to listeners, local service or proxy config")
        var moved = base
        moved.localServicePort = 8081
        moved.port = 21001
        #expect(Sidecar.describeChange(from: base, to: moved) == "changed: public listener, local service")
        var upstreams = base
        upstreams.upstreams = [Upstream(destinationName: "x", tenancy: .default, datacenter: nil, localBindAddress: "127.0.0.1",
                                        localBindPort: 9000, connectTimeoutMs: 1000)]
        #expect(Sidecar.describeChange(from: base, to: upstreams) == "changed: upstreams")
    }
}
