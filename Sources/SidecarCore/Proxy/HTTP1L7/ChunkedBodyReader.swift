import SidecarModel

/// Reads a chunked request body (RFC 9112 §7.1) strictly, pure. Chunk data is passed on as
/// ranges of the input (streamed, never buffered); chunk extensions are dropped (our framing
/// toward the service is written anew); trailer fields are checked like header fields and
/// must not carry framing (`Transfer-Encoding`, `Content-Length`) or `Host`. Refused: a size
/// that is not 1-15 hex digits (no `0x`, sign or whitespace before it), whitespace after a
/// size not followed by an extension, a bare LF or CR, chunk data not followed by CRLF.
package struct ChunkedBodyReader: Sendable {
    package enum Event: Equatable {
        /// Body bytes: this range of the input just fed.
        case data(Range<Int>)
        /// The last chunk and the trailer section have been read.
        case end(trailers: [HTTP1Field])
    }

    static let maxSizeDigits = 15
    static let maxLineBytes = 4096

    private enum State: Sendable {
        case size(digits: Int, value: Int)
        /// After the digits: optional whitespace, then `;` and an extension, up to CR.
        case sizeRest(value: Int, lineBytes: Int, inExtension: Bool, whitespace: Bool)
        case sizeLF(value: Int)
        case data(remaining: Int)
        case dataCR
        case dataLF
        case trailerLine([UInt8])
        case trailerLF([UInt8])
        case done
    }

    private var state = State.size(digits: 0, value: 0)
    private var trailers: [HTTP1Field] = []
    private var trailerBytes = 0

    package init() {}

    var isDone: Bool { if case .done = state { return true }; return false }

    /// Consumes input up to the end of the body (the rest belongs to the next request).
    /// Returns the events and how many bytes were consumed.
    package mutating func feed(_ input: UnsafeRawBufferPointer) -> Result<(events: [Event], consumed: Int), HTTP1Refusal> {
        var events: [Event] = []
        var index = 0
        func refuse(_ reason: String) -> Result<(events: [Event], consumed: Int), HTTP1Refusal> {
            .failure(HTTP1Refusal(400, "malformed chunked body: \(reason)"))
        }
        while index < input.count {
            let byte = input[index]
            switch state {
            case .done:
                return .success((events, index))
            case .size(let digits, let value):
                if let digit = PercentEncoding.hexValue(byte) {
                    guard digits < Self.maxSizeDigits else { return refuse("chunk size longer than \(Self.maxSizeDigits) hex digits") }
                    state = .size(digits: digits + 1, value: value << 4 | Int(digit))
                } else {
                    guard digits > 0 else { return refuse("chunk size is not hex digits") }
                    state = .sizeRest(value: value, lineBytes: digits, inExtension: false, whitespace: false)
                    continue // the same byte, in the next state
                }
            case .sizeRest(let value, let lineBytes, let inExtension, let whitespace):
                guard lineBytes < Self.maxLineBytes else { return refuse("chunk size line longer than \(Self.maxLineBytes) bytes") }
                let isWhitespace = byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
                if byte == Self.cr {
                    // Whitespace after the size is only allowed before an extension's `;`.
                    guard inExtension || !whitespace else { return refuse("whitespace after the chunk size") }
                    state = .sizeLF(value: value)
                } else if byte == UInt8(ascii: ";") || isWhitespace || (inExtension && byte > 0x20 && byte != 0x7F) {
                    state = .sizeRest(value: value, lineBytes: lineBytes + 1, inExtension: inExtension || byte == UInt8(ascii: ";"),
                                      whitespace: whitespace || isWhitespace)
                } else {
                    return refuse(inExtension ? "control character in a chunk extension" : "unexpected character after the chunk size")
                }
            case .sizeLF(let value):
                guard byte == Self.lf else { return refuse("chunk size line not ended by CRLF") }
                state = value == 0 ? .trailerLine([]) : .data(remaining: value)
            case .data(let remaining):
                let take = min(remaining, input.count - index)
                events.append(.data(index..<(index + take)))
                index += take
                state = remaining == take ? .dataCR : .data(remaining: remaining - take)
                continue
            case .dataCR:
                guard byte == Self.cr else { return refuse("chunk data not followed by CRLF") }
                state = .dataLF
            case .dataLF:
                guard byte == Self.lf else { return refuse("chunk data not followed by CRLF") }
                state = .size(digits: 0, value: 0)
            case .trailerLine(var line):
                if byte == Self.cr {
                    state = .trailerLF(line)
                } else {
                    guard byte != Self.lf else { return refuse("bare LF in the trailer section") }
                    trailerBytes += 1
                    guard trailerBytes <= HTTP1HeadReader.maxHeadBytes else { return refuse("trailer section too large") }
                    line.append(byte)
                    state = .trailerLine(line)
                }
            case .trailerLF(let line):
                guard byte == Self.lf else { return refuse("bare CR in the trailer section") }
                if line.isEmpty {
                    state = .done
                    events.append(.end(trailers: trailers))
                    return .success((events, index + 1))
                }
                switch line.withUnsafeBytes({ HTTP1HeadReader.field($0) }) {
                case .failure(let refusal): return refuse("trailer: \(refusal.reason)")
                case .success(let field):
                    guard !["transfer-encoding", "content-length", "host"].contains(field.name.lowercased()) else {
                        return refuse("\(field.name) in the trailer section")
                    }
                    guard trailers.count < HTTP1HeadReader.maxFields else { return refuse("too many trailer fields") }
                    trailers.append(field)
                }
                state = .trailerLine([])
            }
            index += 1
        }
        return .success((events, index))
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")

    /// How one feed's data goes on as body parts.
    package enum BodyPiece: Equatable {
        /// One range, passed on as a slice of the input (no copy).
        case slice(Range<Int>)
        /// Two or more small ranges, copied into one buffer.
        case gathered([Range<Int>])
    }

    /// A range this large goes on as its own slice; smaller neighbours are gathered.
    package static let sliceMinimum = 4096

    /// The body parts for one feed's data ranges, in order. Each chunk's data is a range of
    /// its own, so a peer sending one-byte chunks would make one body part per byte, and
    /// `HTTPServerPipelineHandler` queues each part as an event while a response is in flight
    /// (about a hundred bytes held per byte sent). Gathering runs of small ranges bounds the
    /// parts to two per `sliceMinimum` bytes of input, plus one; large chunks are not copied.
    package static func bodyPieces(_ ranges: [Range<Int>]) -> [BodyPiece] {
        var pieces: [BodyPiece] = []
        var run: [Range<Int>] = []
        func endRun() {
            if run.count == 1 { pieces.append(.slice(run[0])) } else if !run.isEmpty { pieces.append(.gathered(run)) }
            run.removeAll()
        }
        for range in ranges where !range.isEmpty {
            if range.count >= sliceMinimum {
                endRun()
                pieces.append(.slice(range))
            } else {
                run.append(range)
            }
        }
        endRun()
        return pieces
    }

}
