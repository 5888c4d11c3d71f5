import CSystemExtras
import FoundationEssentials
import Glibc
import NIOCore
import SidecarTLS
import SidecarModel

/// What a running sidecar reports: readiness, gauges, live tunnels, expiry warnings, and the
/// counts tests and the admin API read.
extension Sidecar {
    /// Ready for traffic: certificates and intentions loaded, listeners bound (the public one
    /// still accepting), not draining.
    var readiness: (ready: Bool, reason: String) {
        let (draining, noListener, publicListener, wanted) = state.withLockedValue {
            ($0.draining, $0.publicListener == nil && $0.upstreamListeners.isEmpty, $0.publicListener,
             $0.definition.publicListenerAddress)
        }
        if draining { return (false, "draining") }
        if currentIntentions == nil { return (false, "intentions not loaded") }
        if noListener { return (false, "no listener bound") }
        // Moving to a new address (or a move whose bind failed): nothing takes inbound tunnels.
        if let wanted, publicListener?.address != wanted || publicListener?.isClosing == true {
            return (false, "public listener not bound at \(wanted)")
        }
        if let publicListener, !publicListener.isAccepting { return (false, "public listener not accepting: every acceptor closed") }
        if contexts.credentials.expiredLeafReason() != nil { return (false, "leaf certificate expired") }
        return (true, "ready")
    }

    /// The public listener's server channels, one per event loop (tests close them).
    var publicAcceptors: [Channel] { state.withLockedValue { $0.publicListener?.channels ?? [] } }

    /// Our datacenter (the `dc` of our SPIFFE IDs).
    package var datacenter: String { settings.datacenter }

    /// Instances currently known per upstream destination.
    var upstreamInstanceList: [String: [Endpoint]] {
        state.withLockedValue { $0.instances.mapValues(\.endpoints) }
    }

    /// The credentials new handshakes use.
    package var currentCredentials: TLSCredentials { contexts.credentials }

    var currentIntentions: IntentionSet? { authorizer.current }

    /// Open inbound connections (for tests and the admin API).
    var openInboundConnections: Int { table.inboundTunnels.count }

    /// Open connections on a listener ("public" or "upstream:<name>").
    func openConnections(on listener: String) -> Int { table.count(listener) }

    /// Pooled mux connections toward destinations and the tunnels on them (tests, admin).
    func muxPoolCounts() async -> (connections: Int, streams: Int) {
        guard let muxPool else { return (0, 0) }
        return (try? await muxPool.counts(on: group.next()).get()) ?? (0, 0)
    }

    /// Warns (once per certificate) when less than 10% of the leaf's lifetime remains and no
    /// renewal has arrived, so operators hear about a stuck renewal before handshakes fail.
    func warnIfExpiring(now: Date = Date()) {
        let credentials = contexts.credentials
        let remaining = credentials.remainingLifetimeFraction(now: now)
        guard remaining < 0.1 else { return }
        let serial = credentials.leaf.serialNumber
        let first = state.withLockedValue { state in
            defer { state.expiryWarnedSerial = serial }
            return state.expiryWarnedSerial != serial
        }
        guard first else { return }
        settings.logger.warning("leaf certificate close to expiry and no renewal has arrived", metadata: [
            "serial": "\(serial)", "not_after": "\(credentials.leaf.notAfter)",
            "seconds_left": "\(Int(credentials.leaf.notAfter.timeIntervalSince(now)))",
        ])
    }

    /// Every joined tunnel with its byte counts so far, read on each tunnel's event loop.
    func liveTunnels(on eventLoop: EventLoop) -> EventLoopFuture<[LiveTunnel]> {
        let reads = table.channels.compactMap { tracked -> EventLoopFuture<LiveTunnel>? in
            guard let record = tracked.tunnel, let stats = tracked.stats else { return nil }
            return stats.eventLoop.submit {
                LiveTunnel(record: record, bytesFromMesh: stats.value.bytesFromMesh, bytesToMesh: stats.value.bytesToMesh)
            }
        }
        return EventLoopFuture.whenAllComplete(reads, on: eventLoop).map { results in
            results.compactMap { try? $0.get() }.sorted { $0.record.opened < $1.record.opened }
        }
    }

    /// Updates the state gauges (called when /metrics is scraped).
    func refreshMetrics(on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        guard let metrics = settings.metrics else { return eventLoop.makeSucceededVoidFuture() }
        refreshStateGauges(metrics)
        let inboundStreams = table.channels.filter(\.isStream).count
        let pooled = muxPool?.counts(on: eventLoop) ?? eventLoop.makeSucceededFuture((connections: 0, streams: 0))
        return pooled.map { pooled in
            metrics.setGauge(.muxConnectionsActive, Double(pooled.connections), [("side", "upstream")])
            metrics.setGauge(.muxStreamsActive, Double(pooled.streams), [("side", "upstream")])
            metrics.setGauge(.muxStreamsActive, Double(inboundStreams), [("side", "inbound")])
        }
    }

    private func refreshStateGauges(_ metrics: SidecarMetrics) {
        let definition = self.definition
        let listenerNames = [Self.publicListenerName] + definition.upstreams.map(\.listenerName)
        for name in listenerNames {
            metrics.setGauge(.connectionsActive, Double(table.count(name)), [("listener", name)])
        }
        let leaf = contexts.credentials.leaf
        metrics.setGauge(.leafExpiry, leaf.notAfter.timeIntervalSinceNow)
        metrics.setGauge(.trustedRoots, Double(contexts.credentials.trustedRoots.count))
        for (name, rotation) in state.withLockedValue({ $0.instances }) {
            metrics.setGauge(.upstreamInstances, Double(rotation.count), [("upstream", name)])
            // Instances tried last for now after failing (outlier ejection).
            metrics.setGauge(.upstreamInstancesEjected, Double(rotation.ejected().count), [("upstream", name)])
        }
        // Upstreams in the registration that got no listener (each logged with its reason).
        metrics.setGauge(.upstreamsSkipped, Double(definition.skippedUpstreams.count))
        metrics.setGauge(.ready, readiness.ready ? 1 : 0)
        // The allocator's view beside RSS: memory in use by live objects versus freed memory
        // glibc keeps for reuse. RSS growing while in-use stays flat is caching, not a leak.
        let heap = mallinfo2()
        metrics.setGauge(.heapInUse, Double(heap.uordblks + heap.hblkhd))
        metrics.setGauge(.heapFreeRetained, Double(heap.fordblks))
    }
}
