import SidecarModel

/// A piece of what the filter passes on: part of the input it just read, unchanged, or bytes
/// it wrote itself.
enum HTTP2Piece: Equatable {
    case input(Range<Int>)
    case bytes([UInt8])
}

/// One request decided by the intentions, or refused before them (`request` nil then).
struct HTTP2RequestDecision {
    let streamID: UInt32
    let request: HTTPRequestFacts?
    let decision: IntentionDecision
    /// What the client sent, when it differs from the path decided (audit only).
    var rawTarget: String? = nil
    /// The method of a refused request (audit only).
    var refusedMethod: String? = nil
}

/// Why the connection is being ended, and the GOAWAY code that says so to the client.
struct HTTP2Failure: Error, Equatable {
    let code: HTTP2ErrorCode
    let reason: String
}

/// The client-to-service direction of the HTTP/2 L7 filter (no I/O). It reads the client's
/// frames and lets through only what a decided request may send:
/// - each request header block is decoded (client's HPACK context), decided, and, if allowed,
///   re-encoded without HPACK state so the service's decoder never depends on a block it did
///   not see; a denied request is answered with a header-only 403 (or gRPC PERMISSION_DENIED)
///   plus RST_STREAM(NO_ERROR) when its body has not ended (RFC 9113 §8.1), and the service
///   never learns of it. Draining the body instead is no option: clients may stop sending on
///   an error status and then wait for the stream to end (curl 7.88 does, and then reports
///   the NO_ERROR reset as a failed transfer, a client bug we cannot work around);
/// - DATA of allowed streams passes unchanged (streamed, not buffered); DATA the service must
///   not see is dropped and its flow-control credit returned to the client at once;
/// - connection frames (SETTINGS, PING, GOAWAY, WINDOW_UPDATE on stream 0) pass unchanged;
///   frames for streams the service never saw are dropped; unknown frame types are dropped.
/// Anything malformed ends the connection (a stream error may always be treated as a
/// connection error, RFC 9113 §5.4.1), before any byte of it reaches the service.
///
/// Limits, by design: only prior-knowledge h2c (an HTTP/1.1 `Upgrade: h2c` or TLS inside the
/// tunnel is refused as "no preface"); the 403 has no body (see HTTP2Denial); `:path` is
/// normalised like an HTTP/1.1 target (RequestPathNormalizer) and forwarded so; header blocks over
/// 64 KiB end the connection; the service's frames are trusted for framing only (a service
/// that never finishes a frame delays our answers, it cannot make us pass client bytes).
final class HTTP2RequestGate {
    /// Limit for one frame we must hold whole (all but DATA) and for a whole header block.
    static let maxBufferedFrame = 64 * 1024
    /// Streams whose request is still sending, as the service knows them; a client needing
    /// more is not one we want (the service's own concurrency limit is far lower).
    static let maxOpenStreams = 10_000
    /// Recently denied streams whose late frames (RST_STREAM, WINDOW_UPDATE) we still drop
    /// silently; older ones fall back to "closed stream" handling, which is equally safe.
    static let deniedMemory = 256

    struct Output {
        var toService: [HTTP2Piece] = []
        var toClient: [[UInt8]] = []
        var decisions: [HTTP2RequestDecision] = []
        var failure: HTTP2Failure?
    }

    private enum Phase { case preface(matched: Int), firstFrame, frames, failed }
    private enum PayloadHandling { case hold, pass, skip }

    /// HEADERS seen without END_HEADERS: the rest of the block follows in CONTINUATION frames.
    private struct OpenBlock {
        let streamID: UInt32
        let endStream: Bool
        let priority: [UInt8]?
        var fragments: [UInt8]
    }

    private let grpcService: Bool
    private let options: HTTPRequestOptions
    private let decide: (HTTPRequestFacts) -> IntentionDecision
    private let decoder = HeaderBlockDecoder()
    private let encoder: StatelessHeaderEncoder

    private var phase = Phase.preface(matched: 0)
    private var scanner = HTTP2FrameScanner()
    private var frame: HTTP2FrameHeader?
    private var handling = PayloadHandling.skip
    private var held: [UInt8] = []
    private var openBlock: OpenBlock?
    /// Allowed streams whose request has not ended (the service expects more DATA or trailers).
    private var sending: Set<UInt32> = []
    private var declaredLengths = HTTP2DeclaredLengths()
    private var denied: [UInt32] = []
    private var lastClientStream: UInt32 = 0
    /// The highest stream the service has seen a request on.
    private var lastForwardedStream: UInt32 = 0
    /// HEADER_TABLE_SIZE of each SETTINGS the service sent (nil: unchanged), applied to our
    /// decoder when the client acknowledges that SETTINGS, as the client's encoder applies it.
    private var unacknowledgedTableSizes: [Int?] = []

    init(grpcService: Bool, options: HTTPRequestOptions = HTTPRequestOptions(), encoder: StatelessHeaderEncoder,
         decide: @escaping (HTTPRequestFacts) -> IntentionDecision) {
        self.grpcService = grpcService
        self.options = options
        self.encoder = encoder
        self.decide = decide
    }

    // MARK: What the service said

    func serviceSentSettings(headerTableSize: Int?) { unacknowledgedTableSizes.append(headerTableSize) }

    /// The service reset a stream: the client's late frames on it go nowhere.
    func serviceReset(streamID: UInt32) {
        sending.remove(streamID)
        declaredLengths.forget(streamID)
    }

    // MARK: What the client sends

    func receive(_ input: UnsafeRawBufferPointer) -> Output {
        var out = Output()
        var start = 0
        if case .preface(let matched) = phase {
            let preface = HTTP2Frames.clientPreface
            let take = min(preface.count - matched, input.count)
            guard input[0..<take].elementsEqual(preface[matched..<(matched + take)]) else {
                fail(&out, .protocolError, "not HTTP/2 with prior knowledge (no client connection preface)")
                return out
            }
            start = take
            if matched + take < preface.count {
                phase = .preface(matched: matched + take)
                return out
            }
            out.toService.append(.bytes(preface))
            phase = .firstFrame
        }
        if isFailed { return out }
        let rest = UnsafeRawBufferPointer(rebasing: input[start...])
        scanner.scan(rest) { event in
            guard !isFailed else { return }
            switch event {
            case .header(let header): begin(header, &out)
            case .payload(let range): payload(range, of: rest, offset: start, &out)
            case .frameEnd: end(&out)
            }
        }
        return out
    }

    private var isFailed: Bool { if case .failed = phase { return true }; return false }

    private func fail(_ out: inout Output, _ code: HTTP2ErrorCode, _ reason: String) {
        guard !isFailed else { return }
        phase = .failed
        out.failure = HTTP2Failure(code: code, reason: reason)
        out.toClient.append(HTTP2Frames.goaway(lastStreamID: lastClientStream, error: code, debug: reason))
    }

    /// Checks a frame header and decides what to do with its payload.
    private func begin(_ header: HTTP2FrameHeader, _ out: inout Output) {
        frame = header
        held.removeAll(keepingCapacity: true)
        handling = .hold
        if case .firstFrame = phase {
            guard header.type == HTTP2FrameType.settings, !header.has(HTTP2Flag.ack) else {
                return fail(&out, .protocolError, "the client's first frame is not SETTINGS")
            }
            phase = .frames
        }
        if let block = openBlock, header.type != HTTP2FrameType.continuation || header.streamID != block.streamID {
            return fail(&out, .protocolError, "header block of stream \(block.streamID) interrupted")
        }
        if let problem = HTTP2FrameRules.problem(with: header) { return fail(&out, problem.code, problem.reason) }
        switch header.type {
        case HTTP2FrameType.data:
            guard header.streamID % 2 == 1, header.streamID <= lastClientStream else {
                return fail(&out, .protocolError, "DATA on idle stream \(header.streamID)")
            }
            if sending.contains(header.streamID) {
                if header.has(HTTP2Flag.padded) {
                    // Its data length is known once the pad length byte is in: held whole.
                    guard header.length <= Self.maxBufferedFrame else {
                        return fail(&out, .enhanceYourCalm, "padded DATA frame larger than \(Self.maxBufferedFrame) bytes")
                    }
                    return
                }
                let endStream = header.has(HTTP2Flag.endStream)
                if let problem = declaredLengths.received(header.length, endStream: endStream, on: header.streamID) {
                    return fail(&out, .protocolError, "malformed request: \(problem)")
                }
                handling = .pass
                out.toService.append(.bytes(header.bytes))
                if endStream { sending.remove(header.streamID) }
            } else {
                handling = .skip
                // The service never sees these bytes, so it never returns their credit.
                if header.length > 0 { out.toClient.append(HTTP2Frames.windowUpdate(streamID: 0, increment: header.length)) }
            }
        case HTTP2FrameType.headers, HTTP2FrameType.continuation:
            guard header.streamID % 2 == 1 else { return fail(&out, .protocolError, "HEADERS on even stream \(header.streamID)") }
            if header.type == HTTP2FrameType.continuation && openBlock == nil {
                return fail(&out, .protocolError, "CONTINUATION without HEADERS")
            }
            guard header.length + (openBlock?.fragments.count ?? 0) <= Self.maxBufferedFrame else {
                return fail(&out, .enhanceYourCalm, "request header block larger than \(Self.maxBufferedFrame) bytes")
            }
        case HTTP2FrameType.pushPromise:
            return fail(&out, .protocolError, "PUSH_PROMISE from a client")
        case HTTP2FrameType.priority, HTTP2FrameType.rstStream, HTTP2FrameType.settings, HTTP2FrameType.ping,
             HTTP2FrameType.goaway, HTTP2FrameType.windowUpdate:
            guard header.length <= Self.maxBufferedFrame else {
                return fail(&out, .enhanceYourCalm, "control frame larger than \(Self.maxBufferedFrame) bytes")
            }
        default:
            handling = .skip // Unknown frame types are ignored (§5.5); the service has no use for them.
        }
    }

    /// `range` is within `rest`, which starts `offset` bytes into the caller's input.
    private func payload(_ range: Range<Int>, of rest: UnsafeRawBufferPointer, offset: Int, _ out: inout Output) {
        switch handling {
        case .hold: held += rest[range]
        case .pass: out.toService.append(.input((range.lowerBound + offset)..<(range.upperBound + offset)))
        case .skip: break
        }
    }

    private func end(_ out: inout Output) {
        guard let header = frame, handling == .hold else { return }
        frame = nil
        switch header.type {
        case HTTP2FrameType.data: paddedData(header, &out)
        case HTTP2FrameType.headers: headers(header, &out)
        case HTTP2FrameType.continuation:
            guard var block = openBlock else { return }
            block.fragments += held
            openBlock = nil
            if header.has(HTTP2Flag.endHeaders) { complete(block, &out) } else { openBlock = block }
        case HTTP2FrameType.settings:
            if header.has(HTTP2Flag.ack), !unacknowledgedTableSizes.isEmpty,
               let size = unacknowledgedTableSizes.removeFirst() {
                decoder.setMaxTableSize(size)
            }
            out.toService.append(.bytes(header.bytes + held))
        case HTTP2FrameType.ping, HTTP2FrameType.goaway:
            out.toService.append(.bytes(header.bytes + held))
        case HTTP2FrameType.windowUpdate where header.streamID == 0:
            out.toService.append(.bytes(header.bytes + held))
        case HTTP2FrameType.priority:
            if UInt32(bytes: held[0..<4]) & 0x7fff_ffff == header.streamID {
                return fail(&out, .protocolError, "stream \(header.streamID) depends on itself")
            }
            streamFrame(header, &out)
        default: // RST_STREAM, WINDOW_UPDATE on a stream
            guard header.streamID % 2 == 0 || header.streamID <= lastClientStream else {
                return fail(&out, .protocolError, "frame type \(header.type) on idle stream \(header.streamID)")
            }
            if header.type == HTTP2FrameType.rstStream {
                sending.remove(header.streamID)
                declaredLengths.forget(header.streamID)
            }
            streamFrame(header, &out)
        }
    }

    /// A padded DATA frame of an allowed stream, held whole: its data (without padding) counts
    /// against the declared length before the frame is passed on.
    private func paddedData(_ header: HTTP2FrameHeader, _ out: inout Output) {
        guard let padLength = held.first, Int(padLength) < header.length else {
            return fail(&out, .protocolError, "DATA padding longer than its payload")
        }
        let endStream = header.has(HTTP2Flag.endStream)
        if let problem = declaredLengths.received(header.length - 1 - Int(padLength), endStream: endStream, on: header.streamID) {
            return fail(&out, .protocolError, "malformed request: \(problem)")
        }
        out.toService.append(.bytes(header.bytes + held))
        if endStream { sending.remove(header.streamID) }
    }

    /// PRIORITY, RST_STREAM or WINDOW_UPDATE on a stream: only for streams the service knows
    /// (its own pushed streams, or client streams it saw a request on).
    private func streamFrame(_ header: HTTP2FrameHeader, _ out: inout Output) {
        let known = header.streamID % 2 == 0
            || (header.streamID <= lastForwardedStream && !denied.contains(header.streamID))
        if known { out.toService.append(.bytes(header.bytes + held)) }
    }

    private func headers(_ header: HTTP2FrameHeader, _ out: inout Output) {
        var payload = held[...]
        var padding = 0
        if header.has(HTTP2Flag.padded) {
            guard let length = payload.popFirst() else { return fail(&out, .frameSizeError, "HEADERS too short for its padding") }
            padding = Int(length)
        }
        var priority: [UInt8]?
        if header.has(HTTP2Flag.priority) {
            guard payload.count >= 5 else { return fail(&out, .frameSizeError, "HEADERS too short for its priority") }
            priority = Array(payload.prefix(5))
            payload = payload.dropFirst(5)
            if UInt32(bytes: priority![0..<4]) & 0x7fff_ffff == header.streamID {
                return fail(&out, .protocolError, "stream \(header.streamID) depends on itself")
            }
        }
        guard padding <= payload.count else { return fail(&out, .protocolError, "HEADERS padding longer than its payload") }
        let block = OpenBlock(streamID: header.streamID, endStream: header.has(HTTP2Flag.endStream), priority: priority,
                              fragments: Array(payload.dropLast(padding)))
        if header.has(HTTP2Flag.endHeaders) { complete(block, &out) } else { openBlock = block }
    }

    /// A whole header block: a new request, trailers of an allowed one, or a block for a
    /// stream the service does not know (decoded only to keep the HPACK context in step).
    private func complete(_ block: OpenBlock, _ out: inout Output) {
        let fields: [HTTP2HeaderField]
        do {
            fields = try decoder.decode(block.fragments)
        } catch {
            switch error {
            case .compression: return fail(&out, .compressionError, "\(error)")
            case .tooLarge: return fail(&out, .enhanceYourCalm, "\(error) on stream \(block.streamID)")
            case .invalidName, .invalidValue: return fail(&out, .protocolError, "malformed request on stream \(block.streamID): \(error)")
            }
        }
        do {
            if block.streamID > lastClientStream {
                lastClientStream = block.streamID
                try request(block, fields, &out)
            } else if sending.contains(block.streamID) {
                guard block.endStream else { throw HTTP2Malformed("second HEADERS without END_STREAM on stream \(block.streamID)") }
                try HTTP2RequestHeaders.checkTrailers(fields)
                if let problem = declaredLengths.ended(block.streamID) { throw HTTP2Malformed(problem) }
                sending.remove(block.streamID)
                forward(block, fields, &out)
            }
        } catch {
            fail(&out, .protocolError, "malformed request on stream \(block.streamID): \(error)")
        }
    }

    private func request(_ block: OpenBlock, _ fields: [HTTP2HeaderField], _ out: inout Output) throws(HTTP2Malformed) {
        switch try HTTP2RequestHeaders.read(fields, paths: options.paths, underscores: options.underscores) {
        case .refused(let status, let reason, let method, let target):
            let decision = IntentionDecision(allowed: false, reason: .requestRefused(status: status, reason: reason))
            out.decisions.append(HTTP2RequestDecision(streamID: block.streamID, request: nil, decision: decision,
                                                      rawTarget: target, refusedMethod: method))
            answerLocally(block, status: status, reason: reason,
                          grpc: grpcService || fields.contains { $0.name == "content-type" && $0.value.lowercased().hasPrefix("application/grpc") },
                          &out)
        case .request(let facts, let forwardFields):
            let declared = try HTTP2DeclaredLengths.declared(in: forwardFields)
            if block.endStream, let declared, declared != 0 {
                throw HTTP2Malformed("content-length \(declared) on a request without a body")
            }
            let decision = decide(facts)
            let raw = fields.first { $0.name == ":path" }?.value
            let forwardedPath = forwardFields.first { $0.name == ":path" }?.value
            out.decisions.append(HTTP2RequestDecision(streamID: block.streamID, request: facts, decision: decision,
                                                      rawTarget: raw == forwardedPath ? nil : raw))
            if decision.allowed {
                if !block.endStream {
                    guard sending.count < Self.maxOpenStreams else {
                        return fail(&out, .enhanceYourCalm, "more than \(Self.maxOpenStreams) open streams")
                    }
                    sending.insert(block.streamID)
                    declaredLengths.expect(declared, on: block.streamID)
                }
                lastForwardedStream = block.streamID
                forward(block, forwardFields, &out)
                return
            }
            answerLocally(block, status: 403, reason: decision.reasonText,
                          grpc: grpcService || HTTP2RequestHeaders.isGRPC(facts), &out)
        }
    }

    /// A header-only answer of ours; the service never learns of the stream.
    private func answerLocally(_ block: OpenBlock, status: Int, reason: String, grpc: Bool, _ out: inout Output) {
        out.toClient.append(HTTP2Frames.headerBlock(
            streamID: block.streamID, endStream: true, priority: nil,
            block: encoder.encode(HTTP2Denial.responseFields(grpc: grpc, status: status, reason: reason))))
        if !block.endStream {
            // The response is complete: ask the client to stop sending the body (§8.1).
            out.toClient.append(HTTP2Frames.rstStream(streamID: block.streamID, error: .noError))
        }
        denied.append(block.streamID)
        if denied.count > Self.deniedMemory { denied.removeFirst() }
    }

    private func forward(_ block: OpenBlock, _ fields: [HTTP2HeaderField], _ out: inout Output) {
        out.toService.append(.bytes(HTTP2Frames.headerBlock(streamID: block.streamID, endStream: block.endStream,
                                                            priority: block.priority, block: encoder.encode(fields))))
    }
}
