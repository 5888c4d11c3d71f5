import SidecarModel

/// How a request body is delimited. The service always receives it in this framing, written
/// by us (`transfer-encoding: chunked` or the exact `content-length`), never the client's
/// own framing fields: a service can then not find another end of the body than we did.
package enum HTTP1BodyFraming: Equatable, Sendable {
    case none
    case length(Int)
    case chunked
}

/// A request head whose meaning has been checked: what intentions decide on, and (through
/// `nioHead`, written by HTTP1RequestWriter) exactly what the service receives.
package struct HTTP1Request: Equatable, Sendable {
    package var method: String
    package var target: NormalizedTarget
    /// The target as the client sent it (audit only).
    var rawTarget: String
    /// 0 (HTTP/1.0) or 1 (HTTP/1.1).
    var minorVersion: Int
    /// Host, or the authority of an absolute-form target (which replaces Host); nil only for
    /// an HTTP/1.0 request without Host.
    package var authority: String?
    /// Fields forwarded as sent, without the client's framing fields, Host canonical.
    package var fields: [HTTP1Field]
    package var framing: HTTP1BodyFraming
    package var keepAlive: Bool
    var expectsContinue: Bool

    /// What the intentions see: the normalised path, every field (names lowercased) and the
    /// pseudo-headers HTTP/2 requests carry (`:method`, `:path` with its query, `:authority`,
    /// `:scheme`), so one header rule means the same on both protocols.
    var facts: HTTPRequestFacts {
        var headers: [(name: String, value: String)] = [(":method", method), (":path", target.target), (":scheme", "https")]
        if let authority { headers.append((":authority", authority)) }
        headers += fields.map { ($0.name, $0.value) }
        return HTTPRequestFacts(method: method, path: target.path, headers: headers)
    }
}

/// The meaning checks on a syntactically valid head (RFC 9112 §3, §6; RFC 9110), pure. Every
/// way two HTTP/1.1 parsers can disagree on where a request ends, which resource it names or
/// whether it switches protocol is refused, not repaired:
/// - `Transfer-Encoding` other than one field holding exactly `chunked`, on HTTP/1.0, or
///   together with `Content-Length`; `Content-Length` repeated, as a list or not plain digits;
/// - a body on TRACE; CONNECT; `Upgrade` or `HTTP2-Settings` (h2c), which would turn the rest
///   of the connection into bytes no rule reads;
/// - HTTP/1.1 without exactly one valid Host; userinfo in an authority; asterisk-form;
/// - an `Expect` other than `100-continue`; a method with lower-case letters (methods are
///   case-sensitive, and services differ in whether `delete` is `DELETE`);
/// - a path the normaliser refuses.
package enum HTTP1RequestRules {
    package static func interpret(_ head: HTTP1RequestHead, paths: PathNormalization,
                                  underscores: UnderscoreHeaders = .allow) -> Result<HTTP1Request, HTTP1Refusal> {
        func refuse(_ status: Int, _ reason: String) -> Result<HTTP1Request, HTTP1Refusal> { .failure(HTTP1Refusal(status, reason)) }
        let method = head.method
        if method == "CONNECT" { return refuse(405, "CONNECT is not supported on an L7 listener") }
        if method.utf8.contains(where: { $0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z") }) {
            return refuse(400, "method \(method) is not upper case")
        }
        var fields = head.fields
        if fields.contains(where: { $0.name.utf8.contains(UInt8(ascii: "_")) }) {
            switch underscores {
            case .allow: break
            case .reject: return refuse(400, "header field name with an underscore")
            case .drop: fields.removeAll { $0.name.utf8.contains(UInt8(ascii: "_")) }
            }
        }
        func values(_ name: String) -> [String] { fields.filter { $0.name.lowercased() == name }.map(\.value) }
        if !values("upgrade").isEmpty { return refuse(400, "Upgrade is not supported on an L7 listener") }
        if !values("http2-settings").isEmpty { return refuse(400, "HTTP2-Settings (h2c upgrade) is not supported on an L7 listener") }

        // Target and authority.
        let hosts = values("host")
        var authority: String?
        var originTarget = head.target
        if head.target.utf8.first == UInt8(ascii: "/") {
            authority = hosts.first
        } else if let absolute = AbsoluteTarget(head.target) {
            authority = absolute.authority
            originTarget = absolute.pathAndQuery
        } else if head.target == "*" {
            return refuse(400, "asterisk-form request target is not supported")
        } else {
            return refuse(400, "request target is neither a path nor an absolute http(s) URI")
        }
        if head.minorVersion == 1 && hosts.count != 1 { return refuse(400, hosts.isEmpty ? "missing Host" : "more than one Host") }
        if hosts.count > 1 { return refuse(400, "more than one Host") }
        for value in hosts + (authority.map { [$0] } ?? []) where !isValidAuthority(value) {
            return refuse(400, "invalid authority \(value)")
        }
        if let authority, hosts.first != authority {
            // Absolute-form: the target's authority replaces Host (RFC 9112 §3.2.2).
            if let index = fields.firstIndex(where: { $0.name.lowercased() == "host" }) {
                fields[index].value = authority
            } else {
                fields.append(HTTP1Field("Host", authority))
            }
        }

        // Framing.
        let transferEncodings = values("transfer-encoding"), contentLengths = values("content-length")
        let framing: HTTP1BodyFraming
        if !transferEncodings.isEmpty {
            if head.minorVersion == 0 { return refuse(400, "Transfer-Encoding in an HTTP/1.0 request") }
            if !contentLengths.isEmpty { return refuse(400, "both Transfer-Encoding and Content-Length") }
            guard transferEncodings.count == 1, transferEncodings[0].lowercased() == "chunked" else {
                return refuse(400, "Transfer-Encoding other than exactly chunked")
            }
            framing = .chunked
        } else if !contentLengths.isEmpty {
            guard contentLengths.count == 1, let length = plainLength(contentLengths[0]) else {
                return refuse(400, "invalid Content-Length")
            }
            framing = .length(length)
        } else {
            framing = .none
        }
        if method == "TRACE" && framing != .none && framing != .length(0) { return refuse(400, "TRACE with a body") }
        fields.removeAll { ["transfer-encoding", "content-length"].contains($0.name.lowercased()) }

        let expectations = values("expect")
        let expectsContinue = expectations.count == 1 && expectations[0].lowercased() == "100-continue"
        if !expectations.isEmpty && !expectsContinue { return refuse(417, "expectation other than 100-continue") }

        let connection = values("connection").flatMap { $0.split(separator: ",") }
            .map { String($0).trimmingOptionalWhitespace().lowercased() }
        let keepAlive = connection.contains("close") ? false : (head.minorVersion == 1 || connection.contains("keep-alive"))

        switch RequestPathNormalizer.normalize(originTarget, paths) {
        case .failure(let refusal):
            return refuse(400, refusal.reason)
        case .success(let target):
            return .success(HTTP1Request(method: method, target: target, rawTarget: head.target, minorVersion: head.minorVersion,
                                         authority: authority, fields: fields, framing: framing, keepAlive: keepAlive,
                                         expectsContinue: expectsContinue && head.minorVersion == 1))
        }
    }

    /// 1 to 18 digits, nothing else (no sign, no list, no whitespace inside).
    static func plainLength(_ text: String) -> Int? {
        guard (1...18).contains(text.utf8.count), text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return Int(text)
    }

    /// `host[:port]`: a reg-name or IPv4 of unreserved / sub-delims / pct-encoded characters,
    /// or a bracketed IPv6 literal; never userinfo, a path or whitespace.
    static func isValidAuthority(_ text: String) -> Bool {
        var host = Substring(text)
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let literal = host[host.index(after: host.startIndex)..<close]
            guard !literal.isEmpty, literal.utf8.allSatisfy({ isHex($0) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }) else {
                return false
            }
            host = host[host.index(after: close)...]
            guard host.isEmpty || host.hasPrefix(":") else { return false }
            return host.isEmpty || isPort(host.dropFirst())
        }
        if let colon = host.lastIndex(of: ":") {
            guard isPort(host[host.index(after: colon)...]) else { return false }
            host = host[..<colon]
        }
        return !host.isEmpty && host.utf8.allSatisfy {
            RequestPathNormalizer.isUnreserved($0) || Array("!$&'()*+,;=%".utf8).contains($0)
        }
    }

    private static func isPort(_ text: Substring) -> Bool {
        text.utf8.count <= 5 && text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
}

/// `http://authority/path?query` (or https), split into the authority and an origin-form target.
struct AbsoluteTarget {
    let authority: String
    let pathAndQuery: String

    init?(_ target: String) {
        let lowered = target.lowercased()
        let schemeLength: Int
        if lowered.hasPrefix("http://") { schemeLength = 7 } else if lowered.hasPrefix("https://") { schemeLength = 8 } else { return nil }
        let rest = target.dropFirst(schemeLength)
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        authority = String(rest[..<end])
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        let remainder = rest[end...]
        pathAndQuery = remainder.hasPrefix("/") ? String(remainder) : "/" + remainder
    }
}

extension String {
    /// Without leading and trailing SP and HTAB (HTTP's OWS).
    func trimmingOptionalWhitespace() -> String {
        let isWhitespace: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        let bytes = Array(utf8)
        guard let first = bytes.firstIndex(where: { !isWhitespace($0) }) else { return "" }
        let last = bytes.lastIndex(where: { !isWhitespace($0) })!
        return String(decoding: bytes[first...last], as: UTF8.self)
    }
}
