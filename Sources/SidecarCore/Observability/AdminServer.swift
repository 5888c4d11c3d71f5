import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import SidecarTLS
import SidecarModel

/// The admin listener (default 127.0.0.1:19000): `/metrics` (Prometheus), `/ready`, `/live`,
/// `/certs`, `/config` and `/connections` (JSON, no secrets). GET only; meant for loopback.
package enum AdminServer {
    package static func start(host: String, port: Int, sidecar: Sidecar, metrics: SidecarMetrics,
                             group: EventLoopGroup) async throws -> Channel {
        do {
            return try await ServerBootstrap(group: group)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline().flatMap {
                        channel.pipeline.addHandler(AdminHandler(sidecar: sidecar, metrics: metrics))
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            throw SidecarError.bindFailed(listener: "admin", address: "\(host):\(port)", reason: "\(error)")
        }
    }
}

final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let sidecar: Sidecar
    private let metrics: SidecarMetrics
    private var request: HTTPRequestHead?
    private var lastResponse: EventLoopFuture<Void>?

    init(sidecar: Sidecar, metrics: SidecarMetrics) {
        self.sidecar = sidecar
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            request = nil
            // Answers go out in request order even when one (/metrics) is not ready at once.
            let response = respond(to: head, on: context.eventLoop)
            let previous = lastResponse ?? context.eventLoop.makeSucceededVoidFuture()
            lastResponse = previous.flatMap { response }.map { [self] in send($0, to: head, context: context) }
        }
    }

    private func send(_ response: (HTTPResponseStatus, String, String), to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let (status, contentType, body) = response
        var headers = HTTPHeaders([("content-type", contentType), ("content-length", "\(body.utf8.count)")])
        if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        let keepAlive = head.isKeepAlive, channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }

    private func respond(to head: HTTPRequestHead, on eventLoop: EventLoop) -> EventLoopFuture<(HTTPResponseStatus, String, String)> {
        guard head.method == .GET || head.method == .HEAD else { return eventLoop.makeSucceededFuture(respond(to: head)) }
        if head.path == "/connections" {
            // Byte counts live on each tunnel's event loop.
            return sidecar.liveTunnels(on: eventLoop).map { tunnels in
                (.ok, "application/json", Self.json(["connections": tunnels.map { Self.describe($0) }, "count": tunnels.count]))
            }
        }
        guard head.path == "/metrics" else { return eventLoop.makeSucceededFuture(respond(to: head)) }
        // State gauges are read first; the mux pools' counts live on their own event loops.
        let metrics = self.metrics
        return sidecar.refreshMetrics(on: eventLoop).map { (.ok, "text/plain; version=0.0.4", metrics.exposition()) }
    }

    private func respond(to head: HTTPRequestHead) -> (HTTPResponseStatus, String, String) {
        guard head.method == .GET || head.method == .HEAD else { return (.methodNotAllowed, "text/plain", "GET only\n") }
        switch head.path {
        case "/live":
            return (.ok, "text/plain", "live\n")
        case "/ready":
            let (ready, reason) = sidecar.readiness
            return (ready ? .ok : .serviceUnavailable, "text/plain", reason + "\n")
        case "/certs":
            return (.ok, "application/json", Self.json(sidecar.certificateReport()))
        case "/config":
            return (.ok, "application/json", Self.json(sidecar.configurationReport()))
        default:
            return (.notFound, "text/plain", "not found; try /metrics /ready /live /certs /config /connections\n")
        }
    }

    static func json(_ value: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }

    /// One `/connections` entry; field names as in the audit log.
    static func describe(_ tunnel: LiveTunnel, now: Date = Date()) -> [String: Any] {
        let record = tunnel.record
        var entry: [String: Any] = [
            "connection_id": record.connectionID, "direction": record.direction.rawValue, "listener": record.listener,
            "peer_spiffe_id": record.peerIdentity, "peer_addr": record.peerAddress,
            "bytes_from_mesh": tunnel.bytesFromMesh, "bytes_to_mesh": tunnel.bytesToMesh,
            "opened": Timestamp.rfc3339(record.opened), "age_s": Int(now.timeIntervalSince(record.opened)),
        ]
        if let mux = record.muxConnectionID { entry["mux_connection_id"] = mux }
        if let stream = record.muxStream { entry["mux_stream"] = stream }
        if let intention = record.intention { entry["intention"] = intention }
        if let caller = record.caller {
            var described: [String: Any] = ["uid": Int(caller.uid)]
            if let gid = caller.gid { described["gid"] = Int(gid) }
            if let pid = caller.pid { described["pid"] = Int(pid) }
            if let exe = caller.executable { described["exe"] = exe }
            entry["caller"] = described
        }
        return entry
    }
}

extension HTTPRequestHead {
    /// The URI without its query.
    fileprivate var path: String { uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "" }
}

extension Sidecar {
    /// `/certs`: what new handshakes present and trust. Public material only.
    func certificateReport() -> [String: Any] {
        let credentials = currentCredentials
        func describe(_ certificate: Certificate) -> [String: Any] {
            ["serial": certificate.serialNumber, "uris": certificate.uriSANs,
             "not_before": Timestamp.rfc3339(certificate.notBefore), "not_after": Timestamp.rfc3339(certificate.notAfter)]
        }
        var leaf = describe(credentials.leaf)
        leaf["spiffe_id"] = credentials.identity.uri
        leaf["seconds_to_expiry"] = Int(credentials.leaf.notAfter.timeIntervalSinceNow)
        return ["trust_domain": credentials.trustDomain, "leaf": leaf,
                "intermediates": credentials.chain.dropFirst().map(describe),
                "roots": credentials.trustedRoots.map(describe)]
    }

    /// `/config`: the effective configuration. No keys, no tokens.
    func configurationReport() -> [String: Any] {
        let definition = self.definition
        let config = definition.config
        let instances = upstreamInstanceList
        var limits: [String: Any] = [
            "handshake_timeout_ms": config.handshakeTimeoutMs, "local_connect_timeout_ms": config.localConnectTimeoutMs,
            "max_connections": config.maxConnections, "mux_max_streams": config.muxMaxStreams,
            "mux_keepalive_interval_s": Double(config.muxKeepaliveNs) / 1e9,
        ]
        if let idle = config.idleTimeoutNs { limits["idle_timeout_s"] = Double(idle) / 1e9 }
        if let lifetime = config.maxConnectionLifetimeNs { limits["max_connection_lifetime_s"] = Double(lifetime) / 1e9 }
        let set = currentIntentions
        return [
            "proxy": ["id": definition.id, "name": definition.name, "destination_service": definition.destinationServiceName,
                      "public_listener": definition.publicBindPort.map { "\(definition.publicBindAddress):\($0)" } ?? NSNull(),
                      "local_service": definition.localServicePort.map { "\(definition.localServiceAddress):\($0)" as Any } ?? NSNull(),
                      "protocol": config.protocol, "proxy_protocol": config.proxyProtocol ? "v2" : "off"],
            "limits": limits,
            "datacenter": settings.datacenter,
            "upstreams": definition.upstreams.map { upstream -> [String: Any] in
                ["destination": upstream.destinationName, "namespace": upstream.destinationNamespace,
                 "partition": upstream.destinationPartition, "datacenter": upstream.datacenter ?? settings.datacenter,
                 "local_bind": upstream.listenerKey, "connect_timeout_ms": upstream.connectTimeoutMs,
                 "instances": (instances[upstream.instanceKey] ?? []).map(\.description)]
            },
            "intentions": ["loaded": set != nil, "count": set?.intentions.count ?? 0,
                           "default": set?.defaultAction.rawValue ?? "deny"],
        ]
    }
}
