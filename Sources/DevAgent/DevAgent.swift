import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import SidecarHTTP
import SidecarModel

/// An embedded Consul control plane for development and tests, like `consul agent -dev`:
/// the subset of Consul's HTTP API the sidecar uses (agent services and checks, health,
/// Connect CA roots and leaves, intentions, config entries, ACL login) with Consul's paths,
/// JSON shapes, status codes and blocking semantics.
package final class DevAgent: Sendable {
    private let engine: AgentEngine
    private let server: HTTPServer
    private let boundPort = NIOLockedValueBox<Int?>(nil)

    /// Creates the CA and loads `configDirectory`; throws naming a file that fails to load.
    package init(configuration: DevAgentConfiguration) throws {
        let engine = try AgentEngine(configuration: configuration)
        self.engine = engine
        let router = Router(engine: engine)
        server = HTTPServer { await router.handle($0) }
        if let directory = configuration.configDirectory { try ConfigDirectory.load(directory, into: engine) }
    }

    /// Binds the HTTP API and returns the port. After `stop()` it binds the same port again
    /// (the one first bound when `httpPort` is 0); all state is kept.
    package func start() async throws -> Int {
        let configuration = engine.configuration
        let port = boundPort.withLockedValue { $0 } ?? configuration.httpPort
        let bound = try await server.start(host: configuration.httpHost, port: port)
        boundPort.withLockedValue { $0 = bound }
        configuration.logger.info("dev agent: HTTP API listening",
                                  metadata: ["address": "\(configuration.httpHost):\(bound)", "trustDomain": "\(trustDomain)"])
        return bound
    }

    /// Closes the listener and every open HTTP connection (pending blocking queries are dropped).
    package func stop() async {
        await server.stop()
    }

    /// "host:port" once started.
    package var httpAddress: String {
        "\(engine.configuration.httpHost):\(boundPort.withLockedValue { $0 } ?? engine.configuration.httpPort)"
    }

    package var trustDomain: String { engine.store.read { $0.ca.trustDomain } }

    /// Same as `PUT /v1/agent/service/register`.
    func registerService(json: String) throws {
        try Self.bridge { try engine.register(try Fields.parse(Data(json.utf8), what: "the service definition")) }
    }

    /// Same as `PUT /v1/config`.
    func writeConfigEntry(json: String) throws {
        try Self.bridge {
            try engine.writeConfigEntry(try Fields.parse(Data(json.utf8), what: "the config entry").value, source: "writeConfigEntry")
        }
    }

    /// Sets a check to "passing", "warning" or "critical" (as the pass/warn/fail endpoints).
    func setCheck(_ checkID: String, status: String) throws {
        try Self.bridge { try engine.updateCheck(checkID, status: status, output: "") }
    }

    /// Adds (or replaces) a `jwt` auth method for `/v1/acl/login`.
    func addAuthMethod(_ method: DevAgentAuthMethod) throws {
        try engine.addAuthMethod(method)
    }

    /// Whether `token` passes ACL enforcement now (the root token or an unexpired login token).
    func accepts(token: String) -> Bool {
        engine.isValidToken(token)
    }

    /// SecretIDs of login tokens not logged out (expired ones included until the next login).
    var loginTokenSecretIDs: Set<String> { engine.store.read { Set($0.loginTokens.keys) } }

    /// Successful logins since start.
    var loginCount: Int { engine.store.read { $0.loginCount } }

    /// Test fault: the next `count` leaf reads get a leaf that expired an hour ago, as from an
    /// agent whose renewal ran late.
    func serveExpiredLeaves(_ count: Int) {
        engine.store.write { $0.expiredLeafReads = count }
    }

    /// A new root key, cross-signed by the old one; leaves follow within `rootRenewJitter`.
    func rotateCA() throws {
        try Self.bridge { try engine.rotateCA() }
    }

    private static func bridge(_ body: () throws -> Void) throws {
        do { try body() } catch let error as HTTPError { throw DevAgentError(error.message) }
    }
}
