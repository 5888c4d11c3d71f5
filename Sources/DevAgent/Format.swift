import FoundationEssentials
import SidecarHTTP
import SidecarModel
import SidecarTLS

/// Formatting shared by the endpoints.
enum Format {
    static func colonHex<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        bytes.map { lowercaseHex(CollectionOfOne($0)) }.joined(separator: ":")
    }

    static func hex<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        lowercaseHex(bytes)
    }

    /// Go's `time.Duration.String()` for whole seconds: "72h0m0s", "90s", "1m30s".
    static func goDuration(_ seconds: TimeInterval) -> String {
        if seconds < 1 { return "\(Int((seconds * 1000).rounded()))ms" }
        let total = Int(seconds.rounded())
        let hours = total / 3600, minutes = (total % 3600) / 60, secs = total % 60
        if hours > 0 { return "\(hours)h\(minutes)m\(secs)s" }
        if minutes > 0 { return "\(minutes)m\(secs)s" }
        return "\(secs)s"
    }
}

extension HTTPResponse {
    /// A Consul API answer: JSON, with the blocking index when the endpoint has one.
    static func json(_ value: JSON, index: UInt64? = nil, extraHeaders: [(String, String)] = []) -> HTTPResponse {
        var headers = [("Content-Type", "application/json")] + extraHeaders
        if let index { headers.append(("X-Consul-Index", String(index))) }
        return HTTPResponse(status: .ok, headers: headers, body: value.data)
    }
}
