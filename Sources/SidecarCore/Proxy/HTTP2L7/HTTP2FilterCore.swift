import SidecarModel

/// Both directions of one filtered HTTP/2 connection, wired together (no I/O): the service's
/// frames tell the request gate what it must know, and the gate's answers to the client are
/// spliced into the service's frame stream.
final class HTTP2FilterCore {
    struct ClientStep {
        var toService: [HTTP2Piece]
        /// Frames for the client that can be written now (others wait in the splicer).
        var toClient: [[UInt8]]
        var decisions: [HTTP2RequestDecision]
        var failure: HTTP2Failure?
    }

    private let gate: HTTP2RequestGate
    private var splicer = HTTP2ResponseSplicer()

    init(grpcService: Bool, options: HTTPRequestOptions = HTTPRequestOptions(),
         decide: @escaping (HTTPRequestFacts) -> IntentionDecision) {
        gate = HTTP2RequestGate(grpcService: grpcService, options: options, encoder: StatelessHeaderEncoder(), decide: decide)
    }

    /// Our frames still waiting for the service to finish one of its own.
    var queuedForClient: Int { splicer.queuedBytes }

    /// After a failure: the service's bytes no longer reach the client.
    var closed: Bool { splicer.closed }

    func clientBytes(_ input: UnsafeRawBufferPointer) -> ClientStep {
        var out = gate.receive(input)
        // On failure the gate's last frame is the GOAWAY.
        let last = out.failure == nil ? nil : out.toClient.popLast()
        var toClient = out.toClient.compactMap { splicer.splice($0) }
        if let last, let now = splicer.spliceLast(last) { toClient.append(now) }
        return ClientStep(toService: out.toService, toClient: toClient, decisions: out.decisions, failure: out.failure)
    }

    func serviceBytes(_ input: UnsafeRawBufferPointer) -> [HTTP2Piece] {
        let (pieces, observations) = splicer.pass(input)
        for observation in observations {
            switch observation {
            case .settings(let headerTableSize): gate.serviceSentSettings(headerTableSize: headerTableSize)
            case .reset(let streamID): gate.serviceReset(streamID: streamID)
            }
        }
        return pieces
    }
}
