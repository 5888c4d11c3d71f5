import CNGHTTP2
import SidecarModel

/// Turns a decoded request header block into what the intentions look at, refusing blocks
/// that RFC 9113 §8.2-8.3 calls malformed: a service might read such a block differently from
/// us (which of two `:path` fields wins, a `host` that disagrees with `:authority`, HTTP/1.1
/// framing headers that matter after a downgrade), so nothing ambiguous is ever decided on.
enum HTTP2RequestHeaders {
    static let requestPseudoHeaders: Set<String> = [":method", ":scheme", ":authority", ":path", ":protocol"]
    /// Connection-specific fields, forbidden in HTTP/2 (§8.2.2).
    static let connectionSpecific: Set<String> = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"]

    /// What a request header block turned out to be.
    enum Reading: Equatable {
        /// A request to decide: its facts (pseudo-headers included among the headers, as Envoy
        /// exposes them to header rules: `:authority`, `:path` with its query, ...) and the
        /// fields to forward if allowed (`:path` normalised, as decided).
        case request(HTTPRequestFacts, forward: [HTTP2HeaderField])
        /// Well-formed HTTP/2 that we refuse on this stream (answered `status`, never decided).
        case refused(status: Int, reason: String, method: String?, target: String?)
    }

    /// Reads a decoded request header block. Throws the reason it is malformed (a connection
    /// error); a well-formed request the L7 rules cannot accept is `.refused`: CONNECT (also
    /// extended, `:protocol`), a method with lower-case letters, a header name with `_` under
    /// `UnderscoreHeaders.reject`, a path the normaliser refuses.
    static func read(_ fields: [HTTP2HeaderField], paths: PathNormalization,
                     underscores: UnderscoreHeaders = .allow) throws(HTTP2Malformed) -> Reading {
        var pseudo: [String: String] = [:]
        var sawRegular = false
        for field in fields {
            if field.isPseudo {
                guard !sawRegular else { throw HTTP2Malformed("pseudo-header \(field.name) after a regular header") }
                guard requestPseudoHeaders.contains(field.name) else { throw HTTP2Malformed("unknown pseudo-header \(field.name)") }
                guard pseudo.updateValue(field.value, forKey: field.name) == nil else {
                    throw HTTP2Malformed("repeated pseudo-header \(field.name)")
                }
            } else {
                sawRegular = true
                try checkRegular(field)
            }
        }
        guard let method = pseudo[":method"], nghttp2_check_method(method, method.utf8.count) != 0 else {
            throw HTTP2Malformed("missing or invalid :method")
        }
        if method == "CONNECT" && pseudo[":protocol"] == nil {
            // A plain CONNECT names only an authority (§8.5).
            guard pseudo[":authority"] != nil, pseudo[":path"] == nil, pseudo[":scheme"] == nil else {
                throw HTTP2Malformed("CONNECT must carry :authority and neither :scheme nor :path")
            }
        } else {
            guard pseudo[":scheme"]?.isEmpty == false else { throw HTTP2Malformed("missing :scheme") }
            guard let path = pseudo[":path"], !path.isEmpty, nghttp2_check_path(path, path.utf8.count) != 0 else {
                throw HTTP2Malformed("missing or invalid :path")
            }
        }
        if let authority = pseudo[":authority"] {
            for host in fields where host.name == "host" && host.value != authority {
                throw HTTP2Malformed("host header \(host.value) differs from :authority \(authority)")
            }
        }
        let target = pseudo[":path"]
        func refuse(_ status: Int, _ reason: String) -> Reading {
            .refused(status: status, reason: reason, method: method, target: target)
        }
        if method == "CONNECT" { return refuse(405, "CONNECT is not supported on an L7 listener") }
        if method.utf8.contains(where: { $0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z") }) {
            return refuse(400, "method \(method) is not upper case")
        }
        var forward = fields
        if fields.contains(where: { $0.name.utf8.contains(UInt8(ascii: "_")) }) {
            switch underscores {
            case .allow: break
            case .reject: return refuse(400, "header field name with an underscore")
            case .drop: forward.removeAll { $0.name.utf8.contains(UInt8(ascii: "_")) }
            }
        }
        switch RequestPathNormalizer.normalize(target ?? "", paths) {
        case .failure(let refusal):
            return refuse(400, refusal.reason)
        case .success(let normalized):
            let index = forward.firstIndex { $0.name == ":path" }!
            forward[index].value = normalized.target
            return .request(HTTPRequestFacts(method: method, path: normalized.path, headers: forward.map { ($0.name, $0.value) }),
                            forward: forward)
        }
    }

    /// Trailers carry no pseudo-headers and the same field rules as the head (§8.1).
    static func checkTrailers(_ fields: [HTTP2HeaderField]) throws(HTTP2Malformed) {
        for field in fields {
            guard !field.isPseudo else { throw HTTP2Malformed("pseudo-header \(field.name) in trailers") }
            try checkRegular(field)
        }
    }

    private static func checkRegular(_ field: HTTP2HeaderField) throws(HTTP2Malformed) {
        guard !connectionSpecific.contains(field.name) else { throw HTTP2Malformed("connection-specific header \(field.name)") }
        if field.name == "te" && field.value != "trailers" { throw HTTP2Malformed("te other than trailers") }
    }

    /// gRPC clients read a denial from the trailers, not from the HTTP status.
    static func isGRPC(_ facts: HTTPRequestFacts) -> Bool {
        facts.header("content-type")?.lowercased().hasPrefix("application/grpc") ?? false
    }
}

struct HTTP2Malformed: Error, Equatable, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The header-only answers to a denied request. They carry no DATA: a body would spend the
/// client's connection flow-control window behind the service's back (the service keeps its
/// own account of that window and would overrun it), so the reason travels in the audit log
/// and, for gRPC, in grpc-message.
enum HTTP2Denial {
    /// `status` 403 for a denial by intention; 400/405 for a refused request (gRPC: status 3,
    /// INVALID_ARGUMENT, rather than 7, PERMISSION_DENIED).
    static func responseFields(grpc: Bool, status: Int = 403, reason: String) -> [HTTP2HeaderField] {
        guard grpc else { return [HTTP2HeaderField(":status", "\(status)"), HTTP2HeaderField("content-length", "0")] }
        // Trailers-only response (gRPC over HTTP/2).
        let denied = status == 403
        return [HTTP2HeaderField(":status", "200"), HTTP2HeaderField("content-type", "application/grpc"),
                HTTP2HeaderField("grpc-status", denied ? "7" : "3"),
                HTTP2HeaderField("grpc-message", grpcPercentEncoded((denied ? "denied by intention: " : "") + reason))]
    }

    /// grpc-message encoding: printable ASCII except `%` as is, every other UTF-8 byte as %XX.
    static func grpcPercentEncoded(_ text: String) -> String {
        PercentEncoding.encode(text.utf8.prefix(1024)) { $0 >= 0x20 && $0 <= 0x7e && $0 != UInt8(ascii: "%") }
    }
}
