import FoundationEssentials
import Glibc
import SidecarTLS
import NIOCore
import NIOConcurrencyHelpers
import SidecarModel

/// One audit record: every handshake decision and every connection close. Field names are part
/// of the product (operators parse them for SOC 2 evidence); README documents them.
package struct AuditEvent: Sendable, Equatable {
    enum Kind: String, Sendable, CaseIterable {
        /// Inbound: the peer failed TLS verification (bad certificate, protocol, timeout).
        case handshakeRejected = "handshake_rejected"
        /// Inbound: intentions decided on a verified peer.
        case authorization
        /// Upstream: mTLS to the destination established (or not).
        case upstreamConnected = "upstream_connected"
        case upstreamFailed = "upstream_failed"
        /// Inbound: authorized, but the local service could not be reached.
        case localConnectFailed = "local_connect_failed"
        case connectionClosed = "connection_closed"
        /// Inbound: an open connection cut because intentions now deny it, or because it
        /// reached max_connection_lifetime.
        case connectionRevoked = "connection_revoked"
        /// L7: one HTTP request decided by intention permissions.
        case httpRequest = "http_request"
        /// Upstream: the local process is not on the upstream's allow-list; nothing was dialed.
        case callerRefused = "caller_refused"
        /// Either side: an mTLS connection carrying the multiplexed transport was established
        /// (one handshake; each tunnel on it then gets its own lines with `mux_stream`).
        case muxConnected = "mux_connected"
        /// Inbound: a stream on a mux connection refused before it was decided, because the
        /// listener is at max_connections (streams count toward it like connections).
        case tunnelRefused = "tunnel_refused"
        /// A new intention set is in force (from Consul or the intentions file).
        case intentionsUpdated = "intentions_updated"
        /// Our leaf certificate or trust bundle was replaced for new handshakes.
        case certificateRotated = "certificate_rotated"
        /// A changed registration (listeners, local service, limits) was applied.
        case configReloaded = "config_reloaded"
        /// The first line the sidecar writes to a log file when it starts or reopens it; its
        /// `prev_hash` links it to the last line written before.
        case auditLogOpened = "audit_log_opened"
        /// Written once the log can be written again after a failure: how many lines were lost.
        case auditLinesLost = "audit_lines_lost"
    }

    var time = Date()
    var kind: Kind
    /// The listener a connection line belongs to; empty on lifecycle lines (omitted).
    var listener: String
    /// The tunnel (or mux connection) the line is about; `ConnectionID`.
    var connectionID: String?
    /// On a tunnel carried by a mux connection: that connection's `connection_id`.
    var muxConnectionID: String?
    var peerAddress: String?
    var source: String?
    var sourceSerial: String?
    var destination: String?
    var decision: String?
    package var reason: String?
    var bytesIn: Int?
    var bytesOut: Int?
    var durationMs: Int?
    package var method: String?
    /// L7: the normalised path the request was decided on (and forwarded with).
    var path: String?
    /// L7: the request target as the client sent it, when normalisation changed it or the
    /// request was refused before it had a path.
    var requestTarget: String?
    /// Handshake time, on `authorization` and `upstream_connected`.
    var handshakeMs: Double?
    /// The handshake resumed an earlier TLS session (same events); nil: a full handshake.
    var tlsResumed: Bool?
    /// The tunnel is this HTTP/2 stream of a mux connection; nil: a connection of its own.
    var muxStream: Int?
    /// Upstream: the local process using our identity (uid, gid, pid, executable).
    var caller: LocalCaller?
    /// certificate_rotated: our identity, the new and replaced leaf serials, the new leaf's
    /// expiry, and the trusted roots now in force.
    var identity: String?
    var serial: String?
    var previousSerial: String?
    var notAfter: Date?
    var roots: Int?
    /// intentions_updated: how many intentions are in force, and how many open tunnels the
    /// update cut.
    var intentions: Int?
    var revoked: Int?

    init(kind: Kind, listener: String, peerAddress: String? = nil, source: String? = nil,
                sourceSerial: String? = nil, destination: String? = nil, decision: String? = nil,
                reason: String? = nil, bytesIn: Int? = nil, bytesOut: Int? = nil, durationMs: Int? = nil,
                method: String? = nil, path: String? = nil) {
        self.kind = kind
        self.listener = listener
        self.peerAddress = peerAddress
        self.source = source
        self.sourceSerial = sourceSerial
        self.destination = destination
        self.decision = decision
        self.reason = reason
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.durationMs = durationMs
        self.method = method
        self.path = path
    }

    func with(caller: LocalCaller?) -> AuditEvent {
        var copy = self
        copy.caller = caller
        return copy
    }

    func with(handshakeOf peer: TLSPeer) -> AuditEvent {
        var copy = self
        copy.handshakeMs = Double(peer.handshakeDuration.nanoseconds) / 1e6
        copy.tlsResumed = peer.resumed ? true : nil
        return copy
    }

    /// One JSON object, fields in a fixed order, absent fields omitted. Appended piece by piece
    /// into one string: this runs for every connection on its event loop.
    /// Bumped when a field changes meaning or type (adding a field does not bump it); SIEM
    /// parsers key on it. The fields are documented in README.md, "Audit log".
    static let schemaVersion = 1

    var jsonLine: String {
        var line: [UInt8] = []
        appendJSONLine(to: &line)
        return String(decoding: line, as: UTF8.self)
    }

    /// The line and its newline, as the file sink queues and chains it.
    var fileLine: [UInt8] {
        var line: [UInt8] = []
        appendJSONLine(to: &line)
        line.append(UInt8(ascii: "\n"))
        return line
    }

    /// The line as bytes, which the sinks write: built in place, with no String per field
    /// (formatting was 8 % of a sidecar's instructions per mux connection as Strings).
    func appendJSONLine(to line: inout [UInt8]) {
        line.reserveCapacity(line.count + 384)
        // Literal pieces as StaticString bytes: appending a String's UTF-8 view went through
        // the generic sequence path, ~150 instructions each, 21 times per line (callgrind).
        func literal(_ text: StaticString) {
            // withUTF8Buffer, not utf8Start: a one-scalar literal has no pointer to start from.
            text.withUTF8Buffer { line.append(contentsOf: $0) }
        }
        literal("{\"ts\":\"")
        Timestamp.append(time, to: &line)
        literal("\",\"schema_version\":")
        JSONText.appendInteger(Self.schemaVersion, to: &line)
        literal(",\"event\":\"")
        line.append(contentsOf: kind.rawValue.utf8)
        line.append(UInt8(ascii: "\""))
        func key(_ name: StaticString) {
            line.append(UInt8(ascii: ","))
            line.append(UInt8(ascii: "\""))
            literal(name)
            line.append(UInt8(ascii: "\""))
            line.append(UInt8(ascii: ":"))
        }
        func add(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            JSONText.appendQuoted(value, to: &line)
        }
        func add(_ name: StaticString, _ value: Int?) {
            guard let value else { return }
            key(name)
            JSONText.appendInteger(value, to: &line)
        }
        add("connection_id", connectionID)
        add("mux_connection_id", muxConnectionID)
        add("listener", listener.isEmpty ? nil : listener)
        add("peer_addr", peerAddress)
        add("source", source)
        add("source_serial", sourceSerial)
        add("destination", destination)
        add("method", method)
        add("path", path)
        add("request_target", requestTarget)
        add("decision", decision)
        add("reason", reason)
        add("bytes_in", bytesIn)
        add("bytes_out", bytesOut)
        add("duration_ms", durationMs)
        add("mux_stream", muxStream)
        if let handshakeMs {
            // Three decimals, as "%.3f" would print them, without a format string per line.
            let micros = Int((handshakeMs * 1000).rounded())
            key("handshake_ms")
            JSONText.appendInteger(micros / 1000, to: &line)
            line.append(UInt8(ascii: "."))
            Timestamp.appendPadded(micros % 1000, width: 3, to: &line)
        }
        if tlsResumed == true { literal(",\"tls_resumed\":true") }
        if let caller {
            add("caller_uid", Int(caller.uid))
            add("caller_gid", caller.gid.map(Int.init))
            add("caller_pid", caller.pid.map(Int.init))
            add("caller_exe", caller.executable)
        }
        add("identity", identity)
        add("serial", serial)
        add("previous_serial", previousSerial)
        if let notAfter {
            key("not_after")
            line.append(UInt8(ascii: "\""))
            Timestamp.append(notAfter, to: &line)
            line.append(UInt8(ascii: "\""))
        }
        add("roots", roots)
        add("intentions", intentions)
        add("revoked", revoked)
        line.append(UInt8(ascii: "}"))
    }

    static func quote(_ text: String) -> String { JSONText.quoted(text) }
}

/// Where audit records go. Thread-safe: called from every event loop.
package protocol AuditSink: Sendable {
    func record(_ event: AuditEvent)
    /// Returns once every record made before the call has reached its destination.
    func flush()
    /// Where a listener's connections count their bytes as they flow (the metrics sink has
    /// them; the audit sinks do not: a line per read would be noise).
    func trafficMeter(listener: String) -> TrafficMeter?
}

extension AuditSink {
    package func flush() {}
    package func trafficMeter(listener: String) -> TrafficMeter? { nil }
}

/// Keeps records in memory; tests assert on them.
final class MemoryAuditSink: AuditSink {
    private let storage = NIOLockedValueBox<[AuditEvent]>([])
    init() {}
    func record(_ event: AuditEvent) { storage.withLockedValue { $0.append(event) } }
    var events: [AuditEvent] { storage.withLockedValue { $0 } }
}

/// Fans one record out to several sinks.
struct AuditFanOut: AuditSink {
    let sinks: [any AuditSink]
    init(_ sinks: [any AuditSink]) { self.sinks = sinks }
    func record(_ event: AuditEvent) { sinks.forEach { $0.record(event) } }
    func flush() { sinks.forEach { $0.flush() } }
    func trafficMeter(listener: String) -> TrafficMeter? { sinks.lazy.compactMap { $0.trafficMeter(listener: listener) }.first }
}
