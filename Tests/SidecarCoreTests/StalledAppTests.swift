import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import SidecarCore
import TestFixtures
import TestSupport

/// A mesh peer that is allowed in, and hostile: it sends its stream one byte per DATA frame
/// toward an app that has stopped reading (a storage server busy on its disk, or one the peer
/// made write a large reply without reading). The storage sidecar is the real binary, so its
/// memory is its own.
@Suite("Stalled app", .serialized)
struct StalledAppTests {
    static let trickle = 100_000

    @Test("100,000 one-byte DATA frames toward an app that stopped reading: RSS stays within 12 MiB, every byte arrives in order once it reads")
    func oneByteFramesIntoStalledApp() async throws {
        // A unix socket: its kernel buffer (wmem_default, about 208 KiB) does not grow.
        let socketPath = "\(SidecarBinary.scratch)/stalled-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        // Loops of its own: the client's 100,000 writes would hold up the suite's shared loops,
        // and other tests' fixtures with them.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let received = PendingWriteCompactorTests.Received()
        let accepted = group.next().makePromise(of: Channel.self)
        let server = try await ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(received)
                    accepted.succeed(channel)
                }
            }
            .bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).get()
        try await withTeardown({ try? await server.close() }) {
            let port = freeLocalPort(), adminPort = freeLocalPort()
            let service = SidecarBinary.write("stalled-\(port).json", """
                {"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "port": \(port), "address": "127.0.0.1",
                  "proxy": {"destination_service_name": "storage", "local_service_socket_path": "\(socketPath)"}}}
                """)
            let intentions = SidecarBinary.write("stalled-intentions-\(port).json",
                #"[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Action":"allow"}]}]"#)
            let sidecar = try SidecarProcess(["run", "--admin-bind", "127.0.0.1:\(adminPort)", "--service-file", service,
                                              "--intentions-file", intentions, "--drain-timeout", "1s"] + SidecarBinary.certs(),
                                             logName: "stalled-\(port).log")
            defer { _ = sidecar }
            #expect(await eventually { (try? BlockingSocket(port: port)) != nil && (try? BlockingSocket(port: adminPort)) != nil })
            let client = try await HostileMuxClient.connect(port: port, credentials: TestCertificates.credentials("backup-agent"),
                                                        group: group)
            await withTeardown({ await client.close() }) {
                guard case .success(let stream) = await client.open() else {
                    Issue.record("the stream was refused")
                    return
                }
                func fromMesh() async -> Int {
                    let metrics = (try? await AdminHTTP.get(adminPort, "/metrics").body) ?? ""
                    return Int(AdminTests.value(metrics, #"backup_sidecar_bytes_total{listener="public",direction="from_mesh"}"#) ?? 0)
                }
                // The unix socket holds at most wmem_default bytes (its accounting counts more than
                // the payload): a head 192 KiB past that leaves the sidecar a queue for the app,
                // under its 512 KiB mark, so the trickle has something to join.
                let wmemDefault = Int((try? String(contentsOfFile: "/proc/sys/net/core/wmem_default", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 212_992
                let head = PendingWriteCompactorTests.pattern(wmemDefault + (192 << 10), seed: 9)
                try? await stream.writeAndFlush(ByteBuffer(bytes: head))
                #expect(await eventually { await fromMesh() == head.count }, "the head was passed to the app's socket")
                let before = processResidentBytes(sidecar.process.processIdentifier)

                // Each write flushed alone: a lone stream's frames go out at once, one DATA frame
                // (and one TLS record) per byte.
                let trickle = PendingWriteCompactorTests.pattern(Self.trickle, seed: 4)
                for batch in stride(from: 0, to: trickle.count, by: 5_000) {
                    let bytes = Array(trickle[batch..<min(batch + 5_000, trickle.count)])
                    try? await stream.eventLoop.submit {
                        for byte in bytes { stream.writeAndFlush(ByteBuffer(bytes: [byte]), promise: nil) }
                    }.get()
                }
                #expect(await eventually(timeout: 120) { await fromMesh() == head.count + trickle.count },
                        "every byte was passed to the app's socket")
                let after = processResidentBytes(sidecar.process.processIdentifier)
                #expect(after - before < 12 << 20, "RSS grew by \((after - before) >> 10) KiB")

                let app = try? await accepted.futureResult.get()
                try? await app?.eventLoop.submit { try app?.setAutoReadNow(true) }.get()
                let expected = head + trickle
                #expect(await eventually(timeout: 60) { received.all.count >= expected.count })
                #expect(received.all == expected, "in order, none lost")
            }
            #expect(await sidecar.terminate().status == 0)
        }
    }

    /// The 403s are ours: nothing reaches the app, so only our own output can pace the peer.
    @Test("A peer pipelining 200,000 denied HTTP requests without reading the 403s: the sidecar stops reading it, RSS stays within 16 MiB, every request it read is answered once the peer reads")
    func unreadDenials() async throws {
        let backend = try await TestBackend(.repository, group: testGroup)
        try await withTeardown({ await backend.stop() }) {
            let (port, service) = SidecarBinary.storageService("unread-403-\(backend.port).json", appPort: backend.port, http: true)
            let intentions = SidecarBinary.write("unread-403-intentions-\(port).json", """
                [{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Permissions":[
                  {"Action":"allow","HTTP":{"PathPrefix":"/repository/data/"}}]}]}]
                """)
            let sidecar = try SidecarProcess(["run", "--admin-bind", "off", "--service-file", service, "--intentions-file", intentions,
                                              "--audit-log", "\(SidecarBinary.scratch)/unread-403-audit-\(port).jsonl",
                                              "--drain-timeout", "1s"] + SidecarBinary.certs(),
                                             logName: "unread-403-\(port).log")
            defer { _ = sidecar }
            #expect(await eventually { (try? BlockingSocket(port: port)) != nil })
            let script = TestCertificates.repositoryRoot.appendingPathComponent("Tests/hostile/unread_403s.py").path
            let run = try await ProcessRunner.run(["python3", script, "\(port)", TestCertificates.directory, "200000",
                                                   "\(sidecar.process.processIdentifier)"], timeout: 180)
            struct Outcome: Decodable {
                let stalled_at: Int?
                let rss_growth_kib: Int
                let answered: Int
                let expected: Int
            }
            let line = run.output.split(separator: "\n").last.map(String.init) ?? ""
            let outcome = try #require(try? JSONDecoder().decode(Outcome.self, from: Data(line.utf8)), "\(run.output)")
            #expect(outcome.stalled_at != nil, "the sidecar read all 10 MB of requests it could not answer")
            #expect(outcome.rss_growth_kib < 16 << 10, "RSS grew by \(outcome.rss_growth_kib) KiB")
            #expect(outcome.expected > 1000 && outcome.answered == outcome.expected, "reading resumed: \(line)")
            #expect(backend.requests.allSatisfy { $0 == "GET /repository/ping" }, "nothing but probes reached the app")
            #expect(await sidecar.terminate().status == 0)
        }
    }
}
