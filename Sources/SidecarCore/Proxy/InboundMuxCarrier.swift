import FoundationEssentials
import Logging
import NIOCore
import SidecarMux
import SidecarTLS

/// One accepted mux connection, as its streams see it (event loop bound): whether it still
/// takes new streams, and why not.
final class InboundMuxCarrier {
    /// Refused streams (denied, for another service, over max_connections) a connection may
    /// open before it is retired: an admitted peer whose every stream is refused must not be
    /// able to fill the audit log.
    static let maxRefusedStreams = 64

    weak var handler: MuxConnectionHandler?
    /// Marks the table entry when the connection is retired, for whatever reason (so an
    /// intentions update neither counts nor re-decides it).
    private var onRetired: (() -> Void)?
    private let peer: TLSPeer
    private let listener: String
    let peerAddress: String
    private let connectionID: String
    private let audit: any AuditSink
    private let logger: Logger
    private var refusedStreams = 0
    private(set) var retiredBecause: String?

    init(peer: TLSPeer, listener: String, peerAddress: String, connectionID: String, audit: any AuditSink, logger: Logger) {
        self.connectionID = connectionID
        self.peer = peer
        self.listener = listener
        self.peerAddress = peerAddress
        self.audit = audit
        self.logger = logger
    }

    var isRetired: Bool { retiredBecause != nil }

    /// Timers further out than this are not armed (a NotAfter of 9999-12-31, RFC 5280's "no
    /// expiry", is past what a TimeAmount can hold); the per-stream date check still applies.
    static let longestTimer: TimeInterval = 10 * 365 * 86_400

    /// GOAWAY at the peer leaf's NotAfter and at max_connection_lifetime.
    func armLimits(on channel: Channel, lifetime: TimeAmount?) {
        let seconds = peer.certificateNotAfter.timeIntervalSinceNow
        let untilExpiry = seconds.isFinite && seconds < Self.longestTimer ? TimeAmount.nanoseconds(Int64(max(0, seconds) * 1e9)) : nil
        let expiry = untilExpiry.map { delay in
            channel.eventLoop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
                self?.retire(because: "the peer's certificate expired")
            }
        }
        let aged = lifetime.map { lifetime in
            channel.eventLoop.assumeIsolated().scheduleTask(in: lifetime) { [weak self] in
                self?.retire(because: "max_connection_lifetime (\(Double(lifetime.nanoseconds) / 1e9) s) reached")
            }
        }
        channel.closeFuture.whenComplete { _ in
            expiry?.cancel()
            aged?.cancel()
        }
    }

    /// Registers the connection in `table` for re-authorization: an intentions or registration
    /// change that denies its source retires it, on its loop (not once it closed: no line
    /// about a closed connection).
    func register(_ channel: Channel, in table: ConnectionTable) {
        let bound = NIOLoopBound(self, eventLoop: channel.eventLoop)
        onRetired = { [weak channel] in if let channel { table.claimCarrierForRetirement(channel) } }
        _ = table.registerCarrier(channel, authorization: CarrierAuthorization(source: peer.identity) { [weak channel] reason in
            channel?.eventLoop.execute { if channel?.isActive == true { bound.value.retire(because: reason) } }
        })
    }

    func streamRefused() {
        refusedStreams += 1
        if refusedStreams == Self.maxRefusedStreams { retire(because: "\(Self.maxRefusedStreams) refused streams") }
    }

    /// No new streams from now on (GOAWAY); the running ones finish. Audited once.
    func retire(because reason: String) {
        guard retiredBecause == nil else { return }
        retiredBecause = reason
        var event = AuditEvent(kind: .connectionRevoked, listener: listener, peerAddress: peerAddress,
                               source: peer.identity.uri, sourceSerial: peer.certificateSerial, decision: "deny",
                               reason: "mux connection takes no new streams: \(reason)")
        event.connectionID = connectionID
        audit.record(event)
        logger.info("mux connection retired", metadata: ["source": "\(peer.identity)", "reason": "\(reason)"])
        handler?.beginDraining()
        onRetired?()
    }
}
