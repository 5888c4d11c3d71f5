/// Why a request is refused before any byte of it reaches the service. `status` is what the
/// client is answered (the connection is closed after it: a refused request's framing cannot
/// be trusted to find the next one).
package struct HTTP1Refusal: Error, Equatable, CustomStringConvertible, Sendable {
    let status: Int
    package let reason: String

    init(_ status: Int, _ reason: String) {
        self.status = status
        self.reason = reason
    }

    package var description: String { "\(status) \(reason)" }
}

/// One header field line, name as sent (matching is case-insensitive), value without the
/// optional whitespace around it.
package struct HTTP1Field: Equatable, Sendable {
    var name: String
    var value: String

    init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// A request head exactly as the client sent it, syntax checked, meaning not yet.
package struct HTTP1RequestHead: Equatable, Sendable {
    package var method: String
    package var target: String
    /// 0 (HTTP/1.0) or 1 (HTTP/1.1).
    var minorVersion: Int
    package var fields: [HTTP1Field]
}

/// The strict request-head reader of the HTTP/1.1 L7 filter (RFC 9112 §2-5), pure. It accepts
/// one spelling of everything and refuses the rest, because every leniency is a place where
/// the service behind us could read the bytes differently from us:
/// - lines end in CRLF; a bare LF or a bare CR is refused (not tolerated as a line end);
/// - the request line is `method SP target SP HTTP/1.x` with single spaces, a token method,
///   a target of visible ASCII;
/// - field names are tokens followed directly by `:` (no whitespace before it, RFC 9112 §5.1),
///   never empty; continuation lines (obs-fold) are refused;
/// - field values hold no control characters but HTAB; bytes above 0x7F must be UTF-8;
/// - at most `maxHeadBytes` for the whole head, `maxFields` fields, `maxTargetBytes` of target.
/// Up to `maxLeadingEmptyLines` CRLFs before a request line are skipped (RFC 9112 §2.2).
package enum HTTP1HeadReader {
    static let maxHeadBytes = 64 * 1024
    static let maxFields = 100
    static let maxTargetBytes = 8 * 1024
    static let maxLeadingEmptyLines = 4

    package enum Outcome: Equatable {
        /// No complete head yet; the first `scanned` bytes hold no head end and no error
        /// (pass it back to continue the scan without starting over).
        case needMore(scanned: Int)
        /// A head, `length` bytes of input including its empty line.
        case head(HTTP1RequestHead, length: Int)
        case refused(HTTP1Refusal)
    }

    /// Looks for a complete head at the start of `bytes`. `scanned` is what an earlier call
    /// on the same (grown) input already covered.
    package static func read(_ bytes: UnsafeRawBufferPointer, scanned: Int = 0) -> Outcome {
        var start = 0
        var emptyLines = 0
        while start + 1 < bytes.count, bytes[start] == cr, bytes[start + 1] == lf {
            start += 2
            emptyLines += 1
            guard emptyLines <= maxLeadingEmptyLines else { return .refused(HTTP1Refusal(400, "too many empty lines before the request line")) }
        }
        if start < bytes.count, bytes[start] == lf { return .refused(HTTP1Refusal(400, "bare LF before the request line")) }
        if start == bytes.count || (start + 1 == bytes.count && bytes[start] == cr) { return .needMore(scanned: 0) }
        // Find the empty line that ends the head, refusing stray CR and LF on the way.
        var index = max(start, scanned - 3)
        var end: Int?
        while index < bytes.count {
            let byte = bytes[index]
            if byte == lf {
                guard index > start, bytes[index - 1] == cr else { return .refused(HTTP1Refusal(400, "bare LF in the request head")) }
                if index >= start + 3, bytes[index - 2] == lf, bytes[index - 3] == cr {
                    end = index + 1
                    break
                }
            } else if index > start, bytes[index - 1] == cr {
                return .refused(HTTP1Refusal(400, "bare CR in the request head"))
            }
            index += 1
            if index - start > maxHeadBytes { return .refused(HTTP1Refusal(431, "request head larger than \(maxHeadBytes) bytes")) }
        }
        guard let end else {
            // A trailing CR may still be followed by its LF.
            return .needMore(scanned: bytes.count)
        }
        switch parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end])) {
        case .success(let head): return .head(head, length: end)
        case .failure(let refusal): return .refused(refusal)
        }
    }

    /// Parses a head known to be CRLF-delimited and to end in an empty line.
    private static func parse(_ bytes: UnsafeRawBufferPointer) -> Result<HTTP1RequestHead, HTTP1Refusal> {
        var lines: [Range<Int>] = []
        var lineStart = 0
        for index in 1..<bytes.count where bytes[index] == lf {
            lines.append(lineStart..<(index - 1))
            lineStart = index + 1
        }
        // The last "line" is the empty one that ends the head.
        guard lines.count >= 2, lines.last!.isEmpty else { return .failure(HTTP1Refusal(400, "malformed request head")) }
        lines.removeLast()
        guard lines.count - 1 <= maxFields else {
            return .failure(HTTP1Refusal(431, "more than \(maxFields) header fields"))
        }
        var head = HTTP1RequestHead(method: "", target: "", minorVersion: 1, fields: [])
        if let refusal = requestLine(UnsafeRawBufferPointer(rebasing: bytes[lines[0]]), into: &head) {
            return .failure(refusal)
        }
        for line in lines.dropFirst() {
            switch field(UnsafeRawBufferPointer(rebasing: bytes[line])) {
            case .success(let field): head.fields.append(field)
            case .failure(let refusal): return .failure(refusal)
            }
        }
        return .success(head)
    }

    private static func requestLine(_ line: UnsafeRawBufferPointer, into head: inout HTTP1RequestHead) -> HTTP1Refusal? {
        let parts = line.split(separator: space, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty, !parts[2].contains(space) else {
            if line.starts(with: Array("PRI * HTTP/2.0".utf8)) {
                return HTTP1Refusal(505, "HTTP/2 is not accepted on an HTTP/1.1 listener")
            }
            return HTTP1Refusal(400, "malformed request line")
        }
        guard parts[0].allSatisfy(isTokenCharacter) else { return HTTP1Refusal(400, "method is not a token") }
        guard parts[1].count <= maxTargetBytes else { return HTTP1Refusal(414, "request target longer than \(maxTargetBytes) bytes") }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return HTTP1Refusal(400, "request target has a character outside visible ASCII")
        }
        let version = Array(parts[2])
        switch version {
        case Array("HTTP/1.1".utf8): head.minorVersion = 1
        case Array("HTTP/1.0".utf8): head.minorVersion = 0
        default:
            if version.count == 8, version.starts(with: Array("HTTP/".utf8)), isDigit(version[5]), version[6] == UInt8(ascii: "."),
               isDigit(version[7]) {
                return HTTP1Refusal(505, "HTTP version \(String(decoding: version, as: UTF8.self)) is not supported")
            }
            return HTTP1Refusal(400, "malformed HTTP version")
        }
        head.method = String(decoding: parts[0], as: UTF8.self)
        head.target = String(decoding: parts[1], as: UTF8.self)
        return nil
    }

    /// One header (or trailer) field line without its CRLF.
    static func field(_ line: UnsafeRawBufferPointer) -> Result<HTTP1Field, HTTP1Refusal> {
        guard let first = line.first else { return .failure(HTTP1Refusal(400, "malformed header field")) }
        if first == space || first == tab { return .failure(HTTP1Refusal(400, "obsolete line folding in a header field")) }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
            return .failure(HTTP1Refusal(400, "header field without a colon"))
        }
        let name = line[..<colon]
        guard !name.isEmpty else { return .failure(HTTP1Refusal(400, "empty header field name")) }
        guard name.allSatisfy(isTokenCharacter) else {
            let hasWhitespace = name.contains(space) || name.contains(tab)
            return .failure(HTTP1Refusal(400, hasWhitespace ? "whitespace in or after a header field name" : "header field name is not a token"))
        }
        var value = line[(colon + 1)...]
        while let byte = value.first, byte == space || byte == tab { value = value.dropFirst() }
        while let byte = value.last, byte == space || byte == tab { value = value.dropLast() }
        guard value.allSatisfy({ $0 == tab || $0 >= 0x20 && $0 != 0x7F }) else {
            return .failure(HTTP1Refusal(400, "control character in header field \(String(decoding: name, as: UTF8.self))"))
        }
        let text: String
        if value.allSatisfy({ $0 < 0x80 }) {
            text = String(decoding: value, as: UTF8.self)
        } else {
            guard let decoded = String(validating: value, as: UTF8.self) else {
                return .failure(HTTP1Refusal(400, "header field \(String(decoding: name, as: UTF8.self)) is not UTF-8"))
            }
            text = decoded
        }
        return .success(HTTP1Field(String(decoding: name, as: UTF8.self), text))
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")
    private static let space = UInt8(ascii: " "), tab = UInt8(ascii: "\t")

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    /// tchar (RFC 9110 §5.6.2).
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}
