import Logging
import SidecarTLS
import SidecarModel

/// Whether sidecars multiplex tunnels over pooled HTTP/2 connections (`--mux`).
package enum MuxMode: String, Sendable, CaseIterable {
    /// Never offer or accept the mux: one mTLS connection per tunnel, as Consul's own proxies.
    case off
    /// Offer it to destinations and accept it from sources; peers that do not speak it get raw.
    case prefer
}

/// Everything one sidecar process runs with, already loaded and validated.
package struct SidecarSettings: Sendable {
    package var definition: ProxyDefinition
    var credentials: TLSCredentials
    /// nil until intentions have loaded: every inbound connection is refused meanwhile.
    var intentions: IntentionSet?
    /// Static instances per upstream destination name (file mode).
    var upstreamEndpoints: [String: [Endpoint]]
    /// Our datacenter: the default for upstreams that name none.
    package var datacenter: String
    var audit: any AuditSink
    var logger: Logger
    /// Fed every audit event by the Sidecar (no need to add it to `audit`); read at scrape time.
    var metrics: SidecarMetrics?
    /// Upstream listeners may bind non-loopback addresses (off: they lend our identity).
    package var allowNonLoopbackUpstreams = false
    /// Instances arrive from Consul after start (no "no known instance" warning at bind).
    package var consulDiscovery = false
    package var mux = MuxMode.prefer

    package init(definition: ProxyDefinition, credentials: TLSCredentials, intentions: IntentionSet?,
                upstreamEndpoints: [String: [Endpoint]] = [:], datacenter: String = "dc1",
                audit: any AuditSink, logger: Logger, metrics: SidecarMetrics? = nil) {
        self.definition = definition
        self.credentials = credentials
        self.intentions = intentions
        self.upstreamEndpoints = upstreamEndpoints
        self.datacenter = datacenter
        self.audit = audit
        self.logger = logger
        self.metrics = metrics
    }
}

package enum SidecarError: Error, CustomStringConvertible {
    case bindFailed(listener: String, address: String, reason: String)
    case unknownAccount(String)
    case socketPathInUse(String)
    case reconfigurationFailed([String])
    case threadStartFailed(name: String, reason: String)

    package var description: String {
        switch self {
        case .bindFailed(let listener, let address, let reason): return "cannot bind \(listener) listener on \(address): \(reason)"
        case .unknownAccount(let what): return "allowed_uids/allowed_gids: no such \(what)"
        case .socketPathInUse(let detail): return detail
        case .reconfigurationFailed(let failures): return "reconfiguration incomplete: " + failures.joined(separator: "; ")
        case .threadStartFailed(let name, let reason): return "cannot start the \(name) thread: \(reason)"
        }
    }
}
