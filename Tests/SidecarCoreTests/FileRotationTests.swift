import Foundation
import NIOConcurrencyHelpers
import Glibc
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

/// Certificates replaced on disk while the sidecar runs (file mode).
@Suite("File-mode certificate rotation", .serialized)
struct FileRotationTests {
    /// A storage sidecar whose --cert/--key/--ca live in their own directory, watched every 100 ms.
    struct WatchedStorage {
        let directory: String
        let sidecar: Sidecar
        let source: CertificateFileSource
        let audit: MemoryAuditSink
        let backend: TestBackend

        var certificate: String { "\(directory)/storage.pem" }
        var key: String { "\(directory)/storage.key" }
        var roots: String { "\(directory)/roots.pem" }
        var port: Int { sidecar.boundAddress(of: Sidecar.publicListenerName)!.port! }
        var serial: String { sidecar.currentCredentials.leaf.serialNumber }

        static func start(roots: String = "ca.pem") async throws -> WatchedStorage {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rotation-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (from, to) in [("storage.pem", "storage.pem"), ("storage.key", "storage.key"), (roots, "roots.pem")] {
                try FileManager.default.copyItem(atPath: TestCertificates.path(from), toPath: "\(directory)/\(to)")
            }
            let backend = try await TestBackend(.echo, group: testGroup)
            let box = NIOLockedValueBox<Sidecar?>(nil)
            let source = CertificateFileSource(certificatePath: "\(directory)/storage.pem", keyPath: "\(directory)/storage.key",
                                               rootsPath: "\(directory)/roots.pem", trustDomain: nil, logger: quietLogger) {
                try box.withLockedValue { $0 }?.updateCredentials($0)
            }
            let credentials = try source.start(interval: .milliseconds(100))
            let (sidecar, audit) = try await MeshFixture.startStorage(
                backendPort: backend.port, credentials: credentials,
                intentions: MeshFixture.allowBackupAgent + [Intention(destinationName: "storage", sourceName: "restore-agent", action: .allow)])
            box.withLockedValue { $0 = sidecar }
            return WatchedStorage(directory: directory, sidecar: sidecar, source: source, audit: audit, backend: backend)
        }

        /// Replaces a watched file the way renewal tools do: write aside, then rename.
        func replace(_ path: String, with source: String) throws {
            let staging = path + ".new"
            try? FileManager.default.removeItem(atPath: staging)
            try FileManager.default.copyItem(atPath: source, toPath: staging)
            guard rename(staging, path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        }

        func stop() async {
            source.stop()
            await sidecar.stop()
            await backend.stop()
        }
    }

    @Test("A renewed leaf is used for new handshakes; open connections keep flowing; a half-written pair is never loaded")
    func rotateLeaf() async throws {
        let storage = try await WatchedStorage.start()
        try await withTeardown({ await storage.stop() }) {
            let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: storage.port)
            try await withTeardown({ await agent.stop() }) {
                let upstream = agent.boundAddress(of: "upstream:storage")!.port!
                let oldSerial = storage.serial

                let live = try BlockingSocket(port: upstream)
                live.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(live, "before rotation\n") })

                // Certificate first: with the old key it is not a valid pair and must not be loaded.
                try storage.replace(storage.certificate, with: TestCertificates.path("int-storage.pem"))
                try await Task.sleep(for: .milliseconds(400))
                #expect(storage.serial == oldSerial, "a certificate without its key was loaded")
                try storage.replace(storage.key, with: TestCertificates.path("int-storage.key"))
                #expect(await eventually { storage.serial != oldSerial })
                let newSerial = try Certificate.parsePEMBundle(Array(FileManager.default.contents(atPath: TestCertificates.path("int-storage.pem"))!),
                                                               source: "int-storage.pem")[0].serialNumber
                #expect(storage.serial == newSerial)

                #expect(await onThread { echoPing(live, "after rotation, same connection\n") })
                let fresh = try BlockingSocket(port: upstream)
                fresh.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(fresh, "new connection\n") })
                let serialsSeen = agentAudit.events.filter { $0.kind == .upstreamConnected }.compactMap(\.reason)
                #expect(serialsSeen.count == 2)
                #expect(serialsSeen.first?.contains(oldSerial) == true, "\(serialsSeen)")
                #expect(serialsSeen.last?.contains(newSerial) == true, "new handshakes present the new serial: \(serialsSeen)")
            }
        }
    }

    @Test("Garbage, an expired leaf, or a key for another certificate never replaces good certificates")
    func badFilesRejected() async throws {
        let storage = try await WatchedStorage.start()
        try await withTeardown({ await storage.stop() }) {
            let serial = storage.serial
            FileManager.default.createFile(atPath: storage.certificate, contents: Data("-----BEGIN CERTIFICATE-----\nnot base64\n".utf8))
            try await Task.sleep(for: .milliseconds(300))
            #expect(storage.serial == serial)

            try storage.replace(storage.certificate, with: TestCertificates.path("expired.pem"))
            try storage.replace(storage.key, with: TestCertificates.path("expired.key"))
            try await Task.sleep(for: .milliseconds(300))
            #expect(storage.serial == serial, "an expired leaf was loaded")

            try storage.replace(storage.certificate, with: TestCertificates.path("storage.pem"))
            try storage.replace(storage.key, with: TestCertificates.path("backup-agent.key"))
            try await Task.sleep(for: .milliseconds(300))
            #expect(storage.serial == serial)

            // The sidecar keeps serving with what it had.
            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent", storagePort: storage.port)
            try await withTeardown({ await agent.stop() }) {
                let socket = try BlockingSocket(port: agent.boundAddress(of: "upstream:storage")!.port!)
                socket.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(socket, "still serving\n") })
            }
        }
    }

    @Test("CA rotation in file mode: adding the new root to --ca admits its leaves without a restart")
    func addRoot() async throws {
        let storage = try await WatchedStorage.start(roots: "ca.pem")
        try await withTeardown({ await storage.stop() }) {
            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent-ca2", roots: "roots.pem", storagePort: storage.port)
            try await withTeardown({ await agent.stop() }) {
                let upstream = agent.boundAddress(of: "upstream:storage")!.port!

                let refused = try BlockingSocket(port: upstream)
                refused.setReceiveTimeout(seconds: 5)
                #expect(!(await onThread { echoPing(refused, "new CA, old trust\n") }))

                try storage.replace(storage.roots, with: TestCertificates.path("roots.pem"))
                #expect(await eventually { storage.sidecar.currentCredentials.trustedRoots.count == 2 })
                let accepted = try BlockingSocket(port: upstream)
                accepted.setReceiveTimeout(seconds: 30)
                #expect(await onThread { echoPing(accepted, "new CA, both roots trusted\n") })
            }
        }
    }

    @Test("An expired leaf is never presented: the public listener refuses new handshakes and says why")
    func expiredLeafGuard() async throws {
        // Credentials accepted as of 2020 (when expired.pem was valid), used today.
        let pem = { (name: String) in Array(FileManager.default.contents(atPath: TestCertificates.path(name))!) }
        let expired = try TLSCredentials(chain: Certificate.parsePEMBundle(pem("expired.pem"), source: "expired.pem"),
                                         privateKey: PrivateKey.parsePEM(pem("expired.key"), source: "expired.key"),
                                         trustedRoots: Certificate.parsePEMBundle(pem("ca.pem"), source: "ca.pem"),
                                         now: Date(timeIntervalSince1970: 1_590_000_000))
        let backend = try await TestBackend(.echo, group: testGroup)
        try await withTeardown({ await backend.stop() }) {
            let (storage, audit) = try await MeshFixture.startStorage(backendPort: backend.port, credentials: expired,
                                                                      intentions: MeshFixture.allowBackupAgent)
            try await withTeardown({ await storage.stop() }) {
                let (agent, agentAudit) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                                           storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
                try await withTeardown({ await agent.stop() }) {
                    let socket = try BlockingSocket(port: agent.boundAddress(of: "upstream:storage")!.port!)
                    socket.setReceiveTimeout(seconds: 5)
                    #expect(!(await onThread { echoPing(socket, "x\n") }))
                    #expect(await eventually { audit.events.contains { $0.kind == .handshakeRejected } })
                    let rejected = try #require(audit.events.first { $0.kind == .handshakeRejected })
                    #expect(rejected.reason?.contains("refusing to present it") == true, "\(rejected.reason ?? "")")
                    #expect(backend.connections == 0)
                    #expect(await eventually { agentAudit.events.contains { $0.kind == .upstreamFailed } })
                }
            }
        }
    }
}
