/// The `content-length` each allowed HTTP/2 request announced, checked against the DATA it then
/// sends (RFC 9113 §8.1.1: a mismatch makes the request malformed). Without it a service that
/// trusts the header, or one that forwards the request as HTTP/1.1, could read another body
/// than the one we passed. Pure.
struct HTTP2DeclaredLengths {
    private var remaining: [UInt32: Int] = [:]

    /// The one `content-length` of a request, or nil; throws when there are several or it is
    /// not 1 to 18 plain digits.
    static func declared(in fields: [HTTP2HeaderField]) throws(HTTP2Malformed) -> Int? {
        let values = fields.filter { $0.name == "content-length" }.map(\.value)
        guard !values.isEmpty else { return nil }
        guard values.count == 1, let length = HTTP1RequestRules.plainLength(values[0]) else {
            throw HTTP2Malformed("content-length \(values.joined(separator: ", ")) is not one plain number")
        }
        return length
    }

    /// A request whose body follows: its declared length, if any, is held to.
    mutating func expect(_ length: Int?, on stream: UInt32) {
        if let length { remaining[stream] = length }
    }

    /// `count` bytes of DATA on `stream`; the reason the request is malformed, if it is.
    mutating func received(_ count: Int, endStream: Bool, on stream: UInt32) -> String? {
        guard var left = remaining[stream] else { return nil }
        left -= count
        if left < 0 { return "more DATA on stream \(stream) than its content-length" }
        if endStream { return finish(stream, left: left) }
        remaining[stream] = left
        return nil
    }

    /// The request on `stream` ended (END_STREAM on trailers).
    mutating func ended(_ stream: UInt32) -> String? {
        guard let left = remaining[stream] else { return nil }
        return finish(stream, left: left)
    }

    mutating func forget(_ stream: UInt32) { remaining[stream] = nil }

    private mutating func finish(_ stream: UInt32, left: Int) -> String? {
        remaining[stream] = nil
        return left == 0 ? nil : "stream \(stream) ended \(left) bytes short of its content-length"
    }
}
