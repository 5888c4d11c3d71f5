import Foundation
import SidecarTLS
import NIOCore
import NIOConcurrencyHelpers

/// One audit record: every handshake decision and every connection close. Field names are part
/// of the product (operators parse them for SOC 2 evidence); README documents them.
public struct AuditEvent: Sendable, Equatable {
    public enum Kind: String, Sendable {
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
    }

    public var time = Date()
    public var kind: Kind
    public var listener: String
    public var peerAddress: String?
    public var source: String?
    public var sourceSerial: String?
    public var destination: String?
    public var decision: String?
    public var reason: String?
    public var bytesIn: Int?
    public var bytesOut: Int?
    public var durationMs: Int?
    public var method: String?
    public var path: String?
    /// Handshake time, on `authorization` and `upstream_connected`.
    public var handshakeMs: Double?
    /// The handshake resumed an earlier TLS session (same events); nil: a full handshake.
    public var tlsResumed: Bool?
    /// The tunnel is this HTTP/2 stream of a mux connection; nil: a connection of its own.
    public var muxStream: Int?
    /// Upstream: the local process using our identity (uid, gid, pid, executable).
    var caller: LocalCaller?

    public init(kind: Kind, listener: String, peerAddress: String? = nil, source: String? = nil,
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

    /// One JSON object, fields in a fixed order, absent fields omitted.
    public var jsonLine: String {
        var fields: [(String, String)] = [
            ("ts", Self.quote(Self.timestamp(time))), ("event", Self.quote(kind.rawValue)), ("listener", Self.quote(listener)),
        ]
        func add(_ name: String, _ value: String?) { if let value { fields.append((name, Self.quote(value))) } }
        func add(_ name: String, _ value: Int?) { if let value { fields.append((name, String(value))) } }
        add("peer_addr", peerAddress)
        add("source", source)
        add("source_serial", sourceSerial)
        add("destination", destination)
        add("method", method)
        add("path", path)
        add("decision", decision)
        add("reason", reason)
        add("bytes_in", bytesIn)
        add("bytes_out", bytesOut)
        add("duration_ms", durationMs)
        add("mux_stream", muxStream)
        if let handshakeMs { fields.append(("handshake_ms", String(format: "%.3f", handshakeMs))) }
        if tlsResumed == true { fields.append(("tls_resumed", "true")) }
        if let caller {
            add("caller_uid", Int(caller.uid))
            add("caller_gid", Int(caller.gid))
            add("caller_pid", Int(caller.pid))
            add("caller_exe", caller.executable)
        }
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    /// RFC 3339 UTC with milliseconds ("2026-11-29T09:31:01.513Z"). Built by hand: a date
    /// formatter costs more than the rest of a connection's bookkeeping together.
    static func timestamp(_ date: Date) -> String {
        let interval = date.timeIntervalSince1970
        var seconds = time_t(interval.rounded(.down))
        let millis = min(999, Int((interval - Double(seconds)) * 1000))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }

    static func quote(_ text: String) -> String { JSONText.quoted(text) }
}

/// Where audit records go. Thread-safe: called from every event loop.
public protocol AuditSink: Sendable {
    func record(_ event: AuditEvent)
}

/// JSON lines to a file descriptor (stdout by default), one write(2) per line.
public final class JSONLinesAuditSink: AuditSink {
    private let handle: FileHandle
    private let lock = NIOLock()

    public init(handle: FileHandle = .standardOutput) { self.handle = handle }

    public static func file(at path: String) throws -> JSONLinesAuditSink {
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640]) else {
                throw ConfigError(source: path, path: "", message: "cannot create audit log file")
            }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw ConfigError(source: path, path: "", message: "cannot open audit log file for writing")
        }
        handle.seekToEndOfFile()
        return JSONLinesAuditSink(handle: handle)
    }

    public func record(_ event: AuditEvent) {
        let line = Data((event.jsonLine + "\n").utf8)
        lock.withLock { handle.write(line) }
    }
}

/// Keeps records in memory; tests assert on them.
public final class MemoryAuditSink: AuditSink {
    private let storage = NIOLockedValueBox<[AuditEvent]>([])
    public init() {}
    public func record(_ event: AuditEvent) { storage.withLockedValue { $0.append(event) } }
    public var events: [AuditEvent] { storage.withLockedValue { $0 } }
}

/// Fans one record out to several sinks.
public struct AuditFanOut: AuditSink {
    let sinks: [any AuditSink]
    public init(_ sinks: [any AuditSink]) { self.sinks = sinks }
    public func record(_ event: AuditEvent) { sinks.forEach { $0.record(event) } }
}

/// One JSON string literal writer for everything that hand-builds JSON (audit lines, the dev
/// agent's ordered responses).
public enum JSONText {
    public static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
