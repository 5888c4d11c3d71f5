@testable import DevAgent
import Foundation
import NIOCore
import Testing
import TestFixtures
@testable import SidecarModel
@testable import ConsulAgent
@testable import SidecarCore
import TestSupport

private let rootToken = "root-token-for-storage"

/// A dev agent enforcing ACLs with the jwt method, storage's sidecar on the root token, and
/// the backup agent's registration with an upstream to storage.
private struct LoginMesh {
    let mesh: ConsulMesh
    let issuer: DevJWTIssuer
    let imds: IMDSStandIn
    let backend: TestBackend
    let upstreamPort: Int
    let storageProxy: ConsulProxy
    let storage: Sidecar

    static func start(tokenTTL: TimeInterval?, imdsMode: IMDSStandIn.Mode = .good) async throws -> LoginMesh {
        let issuer = try DevJWTIssuer(.es256)
        let imds = try await IMDSStandIn(issuer: issuer, subject: "backup-agent", mode: imdsMode)
        let mesh = try await ConsulMesh.start(aclToken: rootToken, authMethods: [IMDSStandIn.authMethod(issuer, tokenTTL: tokenTTL)])
        let backend = try await TestBackend(.echo, group: testGroup)
        let upstreamPort = freeLocalPort()
        try mesh.registerService(id: "storage", name: "storage", port: backend.port, sidecarPort: freeLocalPort())
        try mesh.registerService(id: "backup-agent", name: "backup-agent", port: freeLocalPort(), sidecarPort: freeLocalPort(),
                                 upstreams: [("storage", upstreamPort)])
        try mesh.allow("backup-agent", to: "storage")
        let (storageProxy, storage) = try await mesh.sidecar(for: "storage", token: rootToken)
        return LoginMesh(mesh: mesh, issuer: issuer, imds: imds, backend: backend, upstreamPort: upstreamPort,
                         storageProxy: storageProxy, storage: storage)
    }

    /// The backup agent's login session, with test-speed renewal and retries.
    func login(logs: RecordingLogHandler) -> ACLLogin {
        var options = ACLLoginOptions(authMethod: "azure-msi")
        options.meta = ["host": "test-vm"]
        options.minimumRenewDelay = 0.5
        // Half the TTL, not production's 80 %: 10 s of slack on a 20 s token. With 4 s, the
        // renewal login once finished after the old token expired, on a machine starved by the
        // whole suite beside two busy loops (scripts/test-under-load.sh).
        options.renewFraction = 0.5
        options.retryBase = 0.1
        options.retryCap = 0.5
        return ACLLogin(options: options, bearer: AzureManagedIdentity(imdsURL: imds.url), logger: logs.logger, metrics: SidecarMetrics())
    }

    func stop() async {
        await storageProxy.stop()
        await storage.stop()
        await backend.stop()
        await imds.stop()
        await mesh.stop()
    }

    /// Re-registers the backup agent with a second upstream; true once its listener is bound,
    /// which proves the registration watch still reads the agent with the current token.
    func addSecondUpstream(to sidecar: Sidecar) async throws -> Bool {
        let second = freeLocalPort()
        try mesh.registerService(id: "backup-agent", name: "backup-agent", port: freeLocalPort(), sidecarPort: freeLocalPort(),
                                 upstreams: [("storage", upstreamPort), ("storage-copy", second)])
        return await eventually { sidecar.definition.upstreams.count == 2 && (try? BlockingSocket(port: second)) != nil }
    }
}

@Suite("Consul ACL login: Azure managed identity -> /v1/acl/login", .serialized)
struct ACLLoginTests {
    @Test("Logs in with the IMDS token, carries traffic, renews before the 20 s TTL (old token logged out), logs out on stop; no secret in the logs")
    func loginRenewLogout() async throws {
        let setup = try await LoginMesh.start(tokenTTL: 20)
        try await withTeardown({ await setup.stop() }) {
            let logs = RecordingLogHandler()
            let (proxy, sidecar) = try await setup.mesh.sidecar(for: "backup-agent", tokenSource: setup.login(logs: logs),
                                                                logger: logs.logger)
            try await withTeardown({ await sidecar.stop() }) {
                let agent = setup.mesh.agent
                #expect(agent.loginCount == 1)
                var secrets = agent.loginTokenSecretIDs
                let first = try #require(secrets.first)
                #expect(setup.imds.server.requests.allSatisfy {
                    $0.contains("api-version=2018-02-01") && $0.contains("resource=https%3A%2F%2Fmanagement.azure.com%2F")
                        && $0.hasSuffix("metadata=true")
                }, "\(setup.imds.server.requests)")
                #expect(await eventually { setup.storage.readiness.ready && sidecar.upstreamInstanceList["storage"]?.count == 1 })
                #expect(await echoRoundTrip(port: setup.upstreamPort))

                // Renewal at half the TTL (see `login`): a new login, the old token logged out, never
                // an expired token in use. 20 s: with 8 s, a request that read the token just before
                // its renewal was delayed past expiry with both cores busy (scripts/test-under-load.sh).
                // One renewal shows the mechanism; production TTLs are hours.
                #expect(await eventually(timeout: 60) { agent.loginCount >= 2 && !agent.loginTokenSecretIDs.contains(first) })
                secrets.formUnion(agent.loginTokenSecretIDs)
                #expect(!agent.accepts(token: first))
                #expect(try await setup.addSecondUpstream(to: sidecar), "watches keep working on the renewed tokens")
                #expect(await echoRoundTrip(port: setup.upstreamPort), "traffic still flows after the renewals")
                #expect(!logs.messages.contains { $0.contains("no longer accepts") }, "renewed before expiry: \(logs.messages)")
                #expect(logs.messages.contains { $0.contains("logged out of Consul") && $0.contains("why=renewed") })

                secrets.formUnion(agent.loginTokenSecretIDs)
                await proxy.stop()
                #expect(agent.loginTokenSecretIDs.isEmpty, "the last token was logged out on stop")
                #expect(secrets.allSatisfy { !agent.accepts(token: $0) })
                let text = logs.messages.joined(separator: "\n")
                #expect(!secrets.contains(where: text.contains), "no ACL token in the logs")
                #expect(!setup.imds.servedTokens.contains(where: text.contains), "no JWT in the logs")
            }
        }
    }

    @Test("IMDS errors and a JWT the agent refuses at startup: clear errors, retries, no crash; proceeds once IMDS serves a good token")
    func badTokenAtStartupThenGood() async throws {
        let setup = try await LoginMesh.start(tokenTTL: nil, imdsMode: .identityNotFound)
        try await withTeardown({ await setup.stop() }) {
            let logs = RecordingLogHandler()
            let login = setup.login(logs: logs)
            let starting = Task { try await setup.mesh.sidecar(for: "backup-agent", tokenSource: login, startupTimeout: .seconds(30),
                                                              logger: logs.logger) }
            #expect(await eventually { logs.messages.contains { $0.contains("Consul ACL login failed") && $0.contains("Identity not found") } })
            setup.imds.mode.withLockedValue { $0 = .untrustedKey }
            #expect(await eventually { logs.messages.contains { $0.contains("no configured public key validates the token signature") } },
                    "the agent's reason reaches the log")
            #expect(setup.mesh.agent.loginCount == 0)
            setup.imds.mode.withLockedValue { $0 = .good }
            let (proxy, sidecar) = try await starting.value
            await withTeardown({ await sidecar.stop() }) {
                #expect(setup.mesh.agent.loginCount == 1)
                #expect(await eventually(timeout: 10) { sidecar.upstreamInstanceList["storage"]?.count == 1 })
                #expect(await echoRoundTrip(port: setup.upstreamPort))
                let secrets = setup.mesh.agent.loginTokenSecretIDs
                await proxy.stop()
                let text = logs.messages.joined(separator: "\n")
                #expect(!setup.imds.servedTokens.contains(where: text.contains), "no JWT, good or bad, in the logs")
                #expect(!secrets.contains(where: text.contains))
            }
        }
    }

    @Test("A token revoked behind the sidecar's back (403 ACL not found) triggers an immediate login; the watches carry on")
    func revokedTokenLogsInAgain() async throws {
        let setup = try await LoginMesh.start(tokenTTL: nil)
        try await withTeardown({ await setup.stop() }) {
            let logs = RecordingLogHandler()
            let (proxy, sidecar) = try await setup.mesh.sidecar(for: "backup-agent", tokenSource: setup.login(logs: logs),
                                                                logger: logs.logger)
            try await withTeardown({ await proxy.stop(); await sidecar.stop() }) {
                let secret = try #require(setup.mesh.agent.loginTokenSecretIDs.first)
                let admin = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: setup.mesh.port)),
                                             eventLoopGroup: testGroup)
                _ = try await admin.post("/v1/acl/logout", body: nil, token: .explicit(secret))
                await admin.shutdown()
                #expect(try await setup.addSecondUpstream(to: sidecar))
                // A blocking query already waiting when the token was revoked may still deliver the
                // change (Consul checks the token when a query starts); the next request gets the 403.
                #expect(await eventually(timeout: 20) { setup.mesh.agent.loginCount == 2 })
                #expect(logs.messages.contains { $0.contains("no longer accepts the ACL token") })
            }
        }
    }

    @Test("The real binary: run -sidecar-for backup-agent --login-method azure-msi --azure-managed-identity carries traffic and logs out on SIGTERM")
    func binaryWithManagedIdentity() async throws {
        let setup = try await LoginMesh.start(tokenTTL: 600)
        try await withTeardown({ await setup.stop() }) {
            let sidecar = try SidecarProcess(
                ["run", "-sidecar-for", "backup-agent", "-http-addr", "127.0.0.1:\(setup.mesh.port)",
                 "--login-method", "azure-msi", "--azure-managed-identity", "--azure-imds-url", setup.imds.url,
                 "--login-meta", "host=vm-1", "--admin-bind", "off", "--audit-log", "\(SidecarBinary.scratch)/acl-login-audit.jsonl"],
                logName: "acl-login.log")
            #expect(await eventuallyEchoes(port: setup.upstreamPort), "traffic through the binary logged in with its managed identity")
            let secrets = setup.mesh.agent.loginTokenSecretIDs
            #expect(secrets.count == 1 && setup.mesh.agent.loginCount == 1)
            let (status, log) = await sidecar.terminate()
            #expect(status == 0, "log: \(log)")
            #expect(log.contains("logged in to Consul") && log.contains("why=shutdown"), "log: \(log)")
            #expect(setup.mesh.agent.loginTokenSecretIDs.isEmpty, "logged out on SIGTERM")
            #expect(!secrets.contains(where: log.contains) && !setup.imds.servedTokens.contains(where: log.contains), "no secret in the log")
        }
    }

    @Test("IMDS answer decoding: expires_on as string or number; errors never quote the token")
    func imdsDecoding() throws {
        let asString = try AzureManagedIdentity.decode(Data(#"{"access_token": "a.b.c", "expires_on": "1800000000"}"#.utf8), source: "imds")
        #expect(asString.jwt == "a.b.c" && asString.expiresAt == Date(timeIntervalSince1970: 1_800_000_000))
        let asNumber = try AzureManagedIdentity.decode(Data(#"{"access_token": "a.b.c", "expires_on": 1800000001}"#.utf8), source: "imds")
        #expect(asNumber.expiresAt == Date(timeIntervalSince1970: 1_800_000_001))
        #expect { try AzureManagedIdentity.decode(Data(#"{"token": "secret-jwt-value"}"#.utf8), source: "imds") }
            throws: { !"\($0)".contains("secret-jwt-value") && "\($0)".contains("no access_token") }
        let parsed = try #require(Timestamp.parse("2026-01-02T03:04:05.123456789Z"))
        #expect(abs(parsed.timeIntervalSince1970 - 1_767_323_045.123456789) < 1e-5)
        #expect(Timestamp.parse("2026-01-02T03:04:05Z") == Date(timeIntervalSince1970: 1_767_323_045))
    }
}
