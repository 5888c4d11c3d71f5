import FoundationEssentials
import Logging

/// Settings of the embedded dev agent (`consul agent -dev` for the sidecar's API subset).
package struct DevAgentConfiguration: Sendable {
    package var httpHost: String = "127.0.0.1"
    /// 0 picks a free port (kept across stop()/start()).
    package var httpPort: Int = 8500
    package var datacenter: String = "dc1"
    var nodeName: String = "dev-node"
    /// Default "<random uuid>.consul", fixed for the agent's life.
    package var trustDomain: String? = nil
    package var leafTTL: TimeInterval = 72 * 3600
    /// Seconds to wait before re-minting leaves after a root change (Consul: 0-30 s).
    var rootRenewJitter: ClosedRange<Double> = 0...1
    /// "allow" or "deny"; a backup mesh runs default deny. Empty: the ACL default policy
    /// decides (Consul's `default_intention_policy` unset).
    package var defaultIntentionPolicy: String = "deny"
    /// `acl.default_policy` while ACLs are on ("allow" or "deny"): what the anonymous token
    /// may do, and the X-Consul-Default-ACL-Policy header.
    var aclDefaultPolicy: String = "deny"
    /// `*.json` service definitions and config entries loaded at init.
    package var configDirectory: String? = nil
    /// When set, ACLs are enforced per endpoint with Consul's rules: this token may do
    /// anything; one minted by `/v1/acl/login` is a service identity; no token is the
    /// anonymous token; any other is 403 "ACL not found".
    package var aclToken: String? = nil
    /// `jwt` auth methods for `POST /v1/acl/login` (more come from `configDirectory`).
    package var authMethods: [DevAgentAuthMethod] = []
    /// The time login tokens are minted and checked against; tests step it instead of sleeping
    /// past a token's TTL (a sleep races the agent on a loaded machine).
    var clock: @Sendable () -> Date = { Date() }
    /// Consul Enterprise namespaces and admin partitions: `?ns=`/`?partition=` select them and
    /// answers name them. Off (Consul CE): answers carry no Namespace/Partition and any
    /// `?ns=`/`?partition=` is 400, as in CE.
    package var enterprise = false
    var logger: Logger

    package init(logger: Logger) {
        self.logger = logger
    }
}

/// Errors of the agent's Swift API (HTTP clients get status codes instead).
struct DevAgentError: Error, CustomStringConvertible, Equatable {
    let message: String

    init(_ message: String) {
        self.message = message
    }

    var description: String { message }
}
