import FoundationEssentials
import SidecarModel

/// One registered service as the agent stores it (Consul's `structs.NodeService`, trimmed).
struct ServiceRecord: Sendable {
    var kind = ""
    var id: String
    var name: String
    /// Consul Enterprise namespace and partition (always default on a CE agent). Service IDs
    /// stay unique across namespaces here (Enterprise allows one ID in two namespaces).
    var tenancy = Tenancy.default
    var tags: [String] = []
    var meta: JSONValue = .emptyObject
    var port = 0
    var address = ""
    var taggedAddresses: JSONValue = .emptyObject
    var weights = (passing: 1, warning: 1)
    var enableTagOverride = false
    var proxy: ProxyRecord?
    var connectNative = false
    /// The parent's ID for a sidecar registered through `connect.sidecar_service`: it is
    /// deregistered with its parent, as Consul does.
    var sidecarParentID: String?
    var createIndex: UInt64 = 0
    var modifyIndex: UInt64 = 0
}

struct ProxyRecord: Sendable {
    var destinationServiceName = ""
    var destinationServiceID = ""
    var localServiceAddress = ""
    var localServicePort = 0
    var localServiceSocketPath: String?
    var mode = ""
    var config: JSONValue = .emptyObject
    var upstreams: [UpstreamRecord] = []
    var meshGateway: JSONValue = .emptyObject
    var expose: JSONValue = .emptyObject
}

struct UpstreamRecord: Sendable {
    var destinationType = "service"
    /// "" unless given; Enterprise fills in the proxy's own (CE leaves them out, omitempty).
    var destinationNamespace = ""
    var destinationPartition = ""
    var destinationName: String
    /// Cluster peering: the peer the destination is imported from ("" for none).
    var destinationPeer = ""
    var datacenter = ""
    /// "" unless given: the proxy picks 127.0.0.1 (Consul stores what was registered).
    var localBindAddress = ""
    var localBindPort = 0
    var localBindSocketPath: String?
    var config: JSONValue = .emptyObject
}

/// A health check. Only TTL checks are driven (by pass/warn/fail and their timer); alias
/// checks mirror another service; other kinds cannot be run by a dev agent and stay as set.
struct CheckRecord: Sendable {
    var id: String
    var name: String
    var serviceID = ""
    var serviceName = ""
    var status: String
    var output = ""
    var notes = ""
    var type = ""
    var ttl: TimeInterval?
    var aliasServiceID: String?
    /// Whether the definition named a status; otherwise a re-registration keeps the current one.
    var statusGiven = false
    /// Bumped on every TTL refresh so a stale expiry timer knows it lost the race.
    var generation = 0
    var createIndex: UInt64 = 0
    var modifyIndex: UInt64 = 0
}

enum CheckStatus {
    static let all: Set<String> = ["passing", "warning", "critical"]

    /// The worst of several statuses (critical > warning > passing); passing when empty.
    static func worst(_ statuses: [String]) -> String {
        if statuses.contains("critical") { return "critical" }
        if statuses.contains("warning") { return "warning" }
        return "passing"
    }
}

extension AgentState {
    /// A check's effective status: alias checks follow their target's own checks.
    func status(of check: CheckRecord) -> String {
        guard let target = check.aliasServiceID else { return check.status }
        guard services[target] != nil else { return "critical" }
        return CheckStatus.worst(checks.values.filter { $0.serviceID == target && $0.aliasServiceID == nil }.map(\.status))
    }

    func checks(ofService id: String) -> [CheckRecord] {
        checks.values.filter { $0.serviceID == id }.sorted { $0.id < $1.id }
    }

    /// The first free port in Consul's default sidecar range (21000-21255).
    func freeSidecarPort(excluding serviceID: String) -> Int? {
        let used = Set(services.values.filter { $0.id != serviceID }.map(\.port))
        return (21000...21255).first { !used.contains($0) }
    }

    /// Stores a registration (replacing one with the same ID) with its checks, keeping the
    /// CreateIndex of what it replaces.
    mutating func register(_ service: ServiceRecord, checks newChecks: [CheckRecord]) {
        let index = nextIndex()
        var service = service
        service.createIndex = services[service.id]?.createIndex ?? index
        service.modifyIndex = index
        services[service.id] = service
        servicesIndex = index
        let keep = Set(newChecks.map(\.id))
        for stale in checks.values where stale.serviceID == service.id && !keep.contains(stale.id) {
            checks[stale.id] = nil
        }
        for var check in newChecks {
            if let existing = checks[check.id] {
                // Consul keeps a re-registered check's current status unless one is given.
                check.createIndex = existing.createIndex
                if !check.statusGiven {
                    check.status = existing.status
                    check.output = existing.output
                }
                check.generation = existing.generation + 1
            } else {
                check.createIndex = index
            }
            check.modifyIndex = index
            checks[check.id] = check
        }
        checksIndex = index
    }

    /// Removes a service, its checks and the sidecar registered along with it.
    /// Returns the removed IDs (empty when unknown).
    mutating func deregister(_ id: String) -> [String] {
        guard services[id] != nil else { return [] }
        let removed = [id] + services.values.filter { $0.sidecarParentID == id }.map(\.id)
        let index = nextIndex()
        for serviceID in removed {
            services[serviceID] = nil
            for check in checks.values where check.serviceID == serviceID { checks[check.id] = nil }
        }
        servicesIndex = index
        checksIndex = index
        return removed
    }

    /// Sets a check's status; the index moves only when something visible changed, so TTL
    /// refreshes do not wake every watcher.
    mutating func updateCheck(_ id: String, status: String, output: String) -> CheckRecord? {
        guard var check = checks[id] else { return nil }
        check.generation += 1
        if check.status != status || check.output != output {
            let index = nextIndex()
            check.status = status
            check.output = output
            check.modifyIndex = index
            checksIndex = index
        }
        checks[id] = check
        return check
    }
}
