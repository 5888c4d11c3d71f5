import FoundationEssentials
import SidecarModel

/// Where a `ConsulClient` gets the ACL token for each request: a static token or token file
/// (`SettingsTokenSource`) or an `ACLLogin` session. The client is passed in so a login-backed
/// source can call the agent itself without owning a client.
package protocol ConsulTokenSource: Sendable {
    /// The token for the next request; nil sends none.
    func token(for client: ConsulClient) async throws -> String?
    /// The agent answered 403 "ACL not found" for `token` (revoked or expired). True when a
    /// retry with a fresh token is worthwhile.
    func rejected(_ token: String, by client: ConsulClient) async -> Bool
    /// The client is shutting down (a login session logs out here).
    func shutdown(_ client: ConsulClient) async
    /// For logs: how requests are authenticated, never the token itself.
    var summary: String { get }
}

/// `-token`, `-token-file`, CONSUL_HTTP_TOKEN(_FILE): `settings.readToken()` before each request.
struct SettingsTokenSource: ConsulTokenSource {
    let settings: ConsulConnectionSettings

    init(settings: ConsulConnectionSettings) {
        self.settings = settings
    }

    func token(for client: ConsulClient) async throws -> String? { try settings.readToken() }
    func rejected(_ token: String, by client: ConsulClient) async -> Bool { false }
    func shutdown(_ client: ConsulClient) async {}
    var summary: String { settings.authSummary }
}
