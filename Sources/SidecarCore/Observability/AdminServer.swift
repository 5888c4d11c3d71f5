import FoundationEssentials
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarHTTP
import SidecarTLS
import SidecarModel

/// The admin listener (default 127.0.0.1:19000): `/metrics` (Prometheus), `/ready`, `/live`,
/// `/certs`, `/config` and `/connections` (JSON, no secrets). GET only; meant for loopback.
package enum AdminServer {
    package static func start(host: String, port: Int, sidecar: Sidecar, metrics: SidecarMetrics,
                              group: EventLoopGroup) async throws -> HTTPServer {
        let server = HTTPServer(maxBodyBytes: 0, group: group) { request in
            await respond(to: request, sidecar: sidecar, metrics: metrics, eventLoop: group.next())
        }
        do {
            try await server.start(host: host, port: port)
        } catch {
            throw SidecarError.bindFailed(listener: "admin", address: "\(host):\(port)", reason: "\(error)")
        }
        return server
    }

    static func respond(to request: HTTPRequest, sidecar: Sidecar, metrics: SidecarMetrics, eventLoop: EventLoop) async -> HTTPResponse {
        guard request.method == .GET || request.method == .HEAD else { return text(.methodNotAllowed, "GET only\n") }
        switch request.path {
        case "/live":
            return text(.ok, "live\n")
        case "/ready":
            let (ready, reason) = sidecar.readiness
            return text(ready ? .ok : .serviceUnavailable, reason + "\n")
        case "/certs":
            return json(sidecar.certificateReport())
        case "/config":
            return json(sidecar.configurationReport())
        case "/connections":
            // Byte counts live on each tunnel's event loop.
            let tunnels = (try? await sidecar.liveTunnels(on: eventLoop).get()) ?? []
            return json(.object([("count", .int(tunnels.count)), ("connections", .array(tunnels.map { describe($0) }))]))
        case "/metrics":
            // State gauges are read first; the mux pools' counts live on their own event loops.
            try? await sidecar.refreshMetrics(on: eventLoop).get()
            return HTTPResponse(status: .ok, headers: [("Content-Type", "text/plain; version=0.0.4")],
                                body: Data(metrics.exposition().utf8))
        default:
            return text(.notFound, "not found; try /metrics /ready /live /certs /config /connections\n")
        }
    }

    private static func text(_ status: HTTPResponseStatus, _ body: String) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "text/plain")], body: Data(body.utf8))
    }

    static func json(_ value: JSON) -> HTTPResponse {
        HTTPResponse(status: .ok, headers: [("Content-Type", "application/json")], body: Data((value.serialized(pretty: true) + "\n").utf8))
    }

    /// One `/connections` entry; field names as in the audit log.
    static func describe(_ tunnel: LiveTunnel, now: Date = Date()) -> JSON {
        let record = tunnel.record
        var entry: [(String, JSON)] = [
            ("connection_id", .string(record.connectionID)), ("direction", .string(record.direction.rawValue)),
            ("listener", .string(record.listener)), ("peer_spiffe_id", .optionalString(record.peerIdentity)),
            ("peer_addr", .optionalString(record.peerAddress)),
            ("bytes_from_mesh", .int(tunnel.bytesFromMesh)), ("bytes_to_mesh", .int(tunnel.bytesToMesh)),
            ("opened", .string(Timestamp.rfc3339(record.opened))), ("age_s", .int(Int(now.timeIntervalSince(record.opened)))),
        ]
        if let mux = record.muxConnectionID { entry.append(("mux_connection_id", .string(mux))) }
        if let stream = record.muxStream { entry.append(("mux_stream", .int(stream))) }
        if let intention = record.intention { entry.append(("intention", .string(intention))) }
        if let caller = record.caller {
            var described: [(String, JSON)] = [("uid", .int(Int(caller.uid)))]
            if let gid = caller.gid { described.append(("gid", .int(Int(gid)))) }
            if let pid = caller.pid { described.append(("pid", .int(Int(pid)))) }
            if let exe = caller.executable { described.append(("exe", .string(exe))) }
            entry.append(("caller", .object(described)))
        }
        return .object(entry)
    }
}

extension Sidecar {
    /// `/certs`: what new handshakes present and trust. Public material only.
    func certificateReport() -> JSON {
        let credentials = currentCredentials
        func fields(_ certificate: Certificate) -> [(String, JSON)] {
            [("serial", .string(certificate.serialNumber)), ("uris", .array(certificate.uriSANs.map(JSON.string))),
             ("not_before", .string(Timestamp.rfc3339(certificate.notBefore))),
             ("not_after", .string(Timestamp.rfc3339(certificate.notAfter)))]
        }
        let leaf = [("spiffe_id", JSON.string(credentials.identity.uri))] + fields(credentials.leaf)
            + [("seconds_to_expiry", .int(Int(credentials.leaf.notAfter.timeIntervalSinceNow)))]
        return .object([("trust_domain", .string(credentials.trustDomain)), ("leaf", .object(leaf)),
                         ("intermediates", .array(credentials.chain.dropFirst().map { .object(fields($0)) })),
                         ("roots", .array(credentials.trustedRoots.map { .object(fields($0)) }))])
    }

    /// `/config`: the effective configuration. No keys, no tokens.
    func configurationReport() -> JSON {
        let definition = self.definition
        let config = definition.config
        let instances = upstreamInstanceList
        var limits: [(String, JSON)] = [
            ("handshake_timeout_ms", .int(config.handshakeTimeoutMs)), ("local_connect_timeout_ms", .int(config.localConnectTimeoutMs)),
            ("max_connections", .int(config.maxConnections)), ("mux_max_streams", .int(config.muxMaxStreams)),
            ("mux_keepalive_interval_s", .double(Double(config.muxKeepaliveNs) / 1e9)),
        ]
        if let idle = config.idleTimeoutNs { limits.append(("idle_timeout_s", .double(Double(idle) / 1e9))) }
        if let lifetime = config.maxConnectionLifetimeNs { limits.append(("max_connection_lifetime_s", .double(Double(lifetime) / 1e9))) }
        let set = currentIntentions
        let proxy: [(String, JSON)] = [
            ("id", .string(definition.id)), ("name", .string(definition.name)),
            ("destination_service", .string(definition.destinationServiceName)),
            ("public_listener", .optionalString(definition.publicBindPort.map { "\(definition.publicBindAddress):\($0)" })),
            ("local_service", .optionalString(definition.localServicePort.map { "\(definition.localServiceAddress):\($0)" })),
            ("protocol", .string(config.protocol)), ("proxy_protocol", .string(config.proxyProtocol ? "v2" : "off")),
        ]
        let upstreams = definition.upstreams.map { upstream -> JSON in
            .object([("destination", .string(upstream.destinationName)), ("namespace", .string(upstream.destinationNamespace)),
                     ("partition", .string(upstream.destinationPartition)),
                     ("datacenter", .string(upstream.datacenter ?? settings.datacenter)),
                     ("local_bind", .string(upstream.listenerKey)), ("connect_timeout_ms", .int(upstream.connectTimeoutMs)),
                     ("instances", .array((instances[upstream.instanceKey] ?? []).map { .string($0.description) }))])
        }
        let intentions: [(String, JSON)] = [("loaded", .bool(set != nil)), ("count", .int(set?.intentions.count ?? 0)),
                                            ("default", .string(set?.defaultAction.rawValue ?? "deny"))]
        return .object([("proxy", .object(proxy)), ("limits", .object(limits)), ("datacenter", .string(settings.datacenter)),
                        ("upstreams", .array(upstreams)), ("intentions", .object(intentions))])
    }
}
