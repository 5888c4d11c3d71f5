/// How request paths are normalised before L7 rules see them (proxy config keys, the
/// counterpart of Consul's mesh `HTTP.Incoming.RequestNormalization`).
package struct PathNormalization: Sendable, Equatable {
    /// What `%2F` and `%5C` (an encoded `/` or `\`) in a path do.
    package enum EscapedSlashes: String, Sendable, Equatable, CaseIterable {
        /// Refused with 400 (default): a service that decodes them after our decision would see
        /// other segments than the rules did (`/repository/x%2F..%2F..%2Fsecret`).
        case reject
        /// Kept as sent (Envoy's default): only for services that never decode them.
        case keep
        /// Decoded into `/` before the path is decided and forwarded.
        case unescape
    }

    /// Collapse runs of `/` (off by default, as in Consul: it changes the path forwarded).
    package var mergeSlashes = false
    package var escapedSlashes = EscapedSlashes.reject

    package init(mergeSlashes: Bool = false, escapedSlashes: EscapedSlashes = .reject) {
        self.mergeSlashes = mergeSlashes
        self.escapedSlashes = escapedSlashes
    }
}

/// An origin-form request target after normalisation: what the rules decide on and exactly
/// what the service is sent.
package struct NormalizedTarget: Equatable, Sendable {
    /// Starts with `/`; no dot segments, no encoded unreserved characters.
    package var path: String
    /// The query without its `?`, as sent (never decoded or changed); nil: none.
    package var query: String?

    /// `path?query`, the request target forwarded (and HTTP/2's `:path`).
    package var target: String { query.map { "\(path)?\($0)" } ?? path }
}

package struct PathRefusal: Error, Equatable, Sendable, CustomStringConvertible {
    package let reason: String
    package var description: String { reason }
}

/// Turns a request target into the one form L7 rules are decided on and the service receives
/// (pure). With RFC 3986 semantics, as Envoy's `normalize_path` in Consul's mesh proxies:
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
///   escape is kept exactly as sent (hex case included);
/// - `.` and `..` segments, plain or encoded (`%2e`), are removed (RFC 3986 §5.2.4; `..` stops
///   at the root);
/// - `%2F`/`%5C` follow `PathNormalization.escapedSlashes`; runs of `/` are merged if asked.
/// Stricter than Envoy, because a refusal can never widen an allow: a fragment, a backslash,
/// `%00`, a malformed escape, a character RFC 3986 does not allow in a path, or a dot segment
/// with parameters (`..;x`, which some servers read as `..`) is refused instead of repaired.
package enum RequestPathNormalizer {
    package static func normalize(_ target: String, _ options: PathNormalization) -> Result<NormalizedTarget, PathRefusal> {
        let bytes = Array(target.utf8)
        if bytes.contains(UInt8(ascii: "#")) { return .failure(PathRefusal(reason: "fragment (#) in the request target")) }
        let questionMark = bytes.firstIndex(of: UInt8(ascii: "?")) ?? bytes.count
        let rawPath = bytes[..<questionMark]
        guard rawPath.first == slash else { return .failure(PathRefusal(reason: "path does not begin with /")) }
        var query: String?
        if questionMark < bytes.count {
            let rawQuery = bytes[(questionMark + 1)...]
            guard rawQuery.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                return .failure(PathRefusal(reason: "query has a character outside visible ASCII"))
            }
            query = String(decoding: rawQuery, as: UTF8.self)
        }
        var segments: [[UInt8]] = [[]]
        var index = rawPath.startIndex
        while index < rawPath.endIndex {
            let byte = rawPath[index]
            switch byte {
            case slash:
                segments.append([])
                index += 1
            case percent:
                guard index + 2 < rawPath.endIndex, let high = PercentEncoding.hexValue(rawPath[index + 1]), let low = PercentEncoding.hexValue(rawPath[index + 2]) else {
                    return .failure(PathRefusal(reason: "malformed percent-encoding in the path"))
                }
                let decoded = high << 4 | low
                switch decoded {
                case 0:
                    return .failure(PathRefusal(reason: "encoded NUL (%00) in the path"))
                case slash, backslash:
                    switch options.escapedSlashes {
                    case .reject:
                        return .failure(PathRefusal(reason: "encoded slash or backslash (%2F, %5C) in the path"))
                    case .keep:
                        segments[segments.count - 1] += rawPath[index...(index + 2)]
                    case .unescape:
                        segments.append([])
                    }
                default:
                    if isUnreserved(decoded) {
                        segments[segments.count - 1].append(decoded)
                    } else {
                        segments[segments.count - 1] += rawPath[index...(index + 2)]
                    }
                }
                index += 3
            case backslash:
                return .failure(PathRefusal(reason: "backslash in the path"))
            default:
                guard isPathCharacter(byte) else {
                    return .failure(PathRefusal(reason: "character \(describe(byte)) is not allowed in a path"))
                }
                segments[segments.count - 1].append(byte)
                index += 1
            }
        }
        var output: [[UInt8]] = []
        for (position, segment) in segments.enumerated().dropFirst() {
            let isLast = position == segments.count - 1
            if segment == dot || segment == dotDot {
                if segment == dotDot, !output.isEmpty { output.removeLast() }
                if isLast { output.append([]) }
                continue
            }
            if isDotSegmentWithParameters(segment) {
                return .failure(PathRefusal(reason: "dot segment with parameters (..;) in the path"))
            }
            output.append(segment)
        }
        if options.mergeSlashes {
            let trailing = output.last?.isEmpty ?? false
            output = output.filter { !$0.isEmpty }
            if trailing && !output.isEmpty { output.append([]) }
        }
        let path = "/" + output.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
        return .success(NormalizedTarget(path: path, query: query))
    }

    private static let slash = UInt8(ascii: "/"), backslash = UInt8(ascii: "\\"), percent = UInt8(ascii: "%")
    private static let dot = [UInt8(ascii: ".")], dotDot = [UInt8(ascii: "."), UInt8(ascii: ".")]

    /// `.;x`, `..;x` and their `%3B` spellings: Tomcat and others take them for `.` and `..`.
    private static func isDotSegmentWithParameters(_ segment: [UInt8]) -> Bool {
        var rest = segment[...]
        guard rest.first == UInt8(ascii: ".") else { return false }
        rest = rest.dropFirst()
        if rest.first == UInt8(ascii: ".") { rest = rest.dropFirst() }
        if rest.first == UInt8(ascii: ";") { return true }
        return rest.count >= 3 && rest.prefix(3).elementsEqual(Array("%3B".utf8)) || rest.prefix(3).elementsEqual(Array("%3b".utf8))
    }

    /// RFC 3986 unreserved.
    package static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// pchar (RFC 3986 §3.3) less pct-encoded, which is handled apart: unreserved, sub-delims, `:`, `@`.
    private static func isPathCharacter(_ byte: UInt8) -> Bool {
        isUnreserved(byte) || Array("!$&'()*+,;=:@".utf8).contains(byte)
    }

    private static func describe(_ byte: UInt8) -> String {
        byte > 0x20 && byte < 0x7F ? "'\(Character(Unicode.Scalar(byte)))'" : "0x" + String(byte, radix: 16, uppercase: true)
    }
}
