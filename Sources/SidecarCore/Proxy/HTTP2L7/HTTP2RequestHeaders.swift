import CNGHTTP2

/// Turns a decoded request header block into what the intentions look at, refusing blocks
/// that RFC 9113 §8.2-8.3 calls malformed: a service might read such a block differently from
/// us (which of two `:path` fields wins, a `host` that disagrees with `:authority`, HTTP/1.1
/// framing headers that matter after a downgrade), so nothing ambiguous is ever decided on.
enum HTTP2RequestHeaders {
    static let requestPseudoHeaders: Set<String> = [":method", ":scheme", ":authority", ":path", ":protocol"]
    /// Connection-specific fields, forbidden in HTTP/2 (§8.2.2).
    static let connectionSpecific: Set<String> = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"]

    /// The request facts, pseudo-headers included among the headers as Envoy exposes them to
    /// header rules (`:authority`, `:path` with its query, ...). Throws the reason it is malformed.
    static func facts(_ fields: [HTTP2HeaderField]) throws(HTTP2Malformed) -> HTTPRequestFacts {
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
        return HTTPRequestFacts(method: method, target: pseudo[":path"] ?? "",
                                headers: fields.map { ($0.name, $0.value) })
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
    static func responseFields(grpc: Bool, reason: String) -> [HTTP2HeaderField] {
        guard grpc else { return [HTTP2HeaderField(":status", "403"), HTTP2HeaderField("content-length", "0")] }
        // Trailers-only response (gRPC over HTTP/2): status 7 is PERMISSION_DENIED.
        return [HTTP2HeaderField(":status", "200"), HTTP2HeaderField("content-type", "application/grpc"),
                HTTP2HeaderField("grpc-status", "7"),
                HTTP2HeaderField("grpc-message", grpcPercentEncoded("denied by intention: " + reason))]
    }

    /// grpc-message encoding: printable ASCII except `%` as is, every other UTF-8 byte as %XX.
    static func grpcPercentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8.prefix(1024) {
            if byte >= 0x20 && byte <= 0x7e && byte != UInt8(ascii: "%") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "%" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}
