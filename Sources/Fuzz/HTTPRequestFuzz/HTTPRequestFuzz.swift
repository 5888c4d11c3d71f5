import FuzzSupport
import NIOHTTP1
import SidecarCore
import SidecarModel

/// The HTTP/1.1 framing check: head reader, request rules and chunked body reader. Input: a
/// split byte, then a request stream. Invariants: never a crash; reading the head in two pieces
/// gives what reading it whole gives; a request we accept, written as we forward it, reads back
/// as the same request (our output is canonical); a chunked body reads the same split anywhere,
/// and re-chunked reads back to the same data.
@_cdecl("LLVMFuzzerTestOneInput")
func httpRequestFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let split = Int(input.byte())
    let bytes = input.remainder()
    let whole = bytes.withUnsafeBytes { HTTP1HeadReader.read($0) }
    // Scanning resumed after a partial read agrees with one pass.
    let cut = min(split, bytes.count)
    if case .needMore(let scanned) = bytes[..<cut].withUnsafeBytes({ HTTP1HeadReader.read(UnsafeRawBufferPointer($0)) }) {
        let resumed = bytes.withUnsafeBytes { HTTP1HeadReader.read($0, scanned: scanned) }
        invariant(resumed == whole, "resumed scan differs: \(resumed) vs \(whole)")
    }
    guard case .head(let head, let length) = whole else { return 0 }
    guard case .success(let request) = HTTP1RequestRules.interpret(head, paths: PathNormalization()) else { return 0 }

    // What we forward reads back as the same request.
    let forwarded = Array(HTTP1RequestWriter.headText(request.nioHead).utf8)
    guard case .head(let again, let againLength) = forwarded.withUnsafeBytes({ HTTP1HeadReader.read($0) }) else {
        invariant(false, "forwarded head does not read back: \(String(decoding: forwarded, as: UTF8.self))")
        return 0
    }
    invariant(againLength == forwarded.count, "forwarded head has trailing bytes")
    let reread = HTTP1RequestRules.interpret(again, paths: PathNormalization())
    guard case .success(let second) = reread else {
        invariant(false, "forwarded head is refused: \(reread)")
        return 0
    }
    invariant(second.method == request.method && second.target == request.target && second.framing == request.framing
                  && second.authority == request.authority && second.keepAlive == request.keepAlive
                  && second.fields == request.fields, "forwarded request reads differently: \(request) vs \(second)")

    // The body, if chunked: the same data whatever the split, and re-chunked it reads back.
    guard request.framing == .chunked else { return 0 }
    let body = Array(bytes[length...])
    guard let (data, consumed) = readChunked(body, splitAt: nil) else { return 0 }
    guard let (splitData, splitConsumed) = readChunked(body, splitAt: split) else {
        invariant(false, "chunked body refused only when split")
        return 0
    }
    invariant(data == splitData && consumed == splitConsumed, "chunked body reads differently when split")
    let rechunked = Array((String(data.count, radix: 16) + "\r\n").utf8) + data + Array("\r\n0\r\n\r\n".utf8)
    let back = data.isEmpty ? readChunked(Array("0\r\n\r\n".utf8), splitAt: nil) : readChunked(rechunked, splitAt: nil)
    invariant(back?.data == data, "re-chunked body reads back differently")
    return 0
}

/// The data of a complete chunked body at the start of `body`, and how many bytes it took;
/// nil if refused or incomplete.
private func readChunked(_ body: [UInt8], splitAt split: Int?) -> (data: [UInt8], consumed: Int)? {
    var reader = ChunkedBodyReader()
    var data: [UInt8] = []
    var offset = 0
    let pieces = split.map { [0..<min($0, body.count), min($0, body.count)..<body.count] } ?? [0..<body.count]
    for piece in pieces {
        var start = piece.lowerBound
        while start < piece.upperBound {
            let chunk = Array(body[start..<piece.upperBound])
            guard case .success(let (events, consumed)) = chunk.withUnsafeBytes({ reader.feed($0) }) else { return nil }
            for event in events {
                switch event {
                case .data(let range): data += chunk[range]
                case .end: return (data, start + consumed)
                }
            }
            start += consumed
            offset = start
            if consumed == 0 { break }
        }
    }
    _ = offset
    return nil
}

@main enum HTTPRequestFuzzMain {
    static func main() { FuzzDriver.main(httpRequestFuzz) }
}
