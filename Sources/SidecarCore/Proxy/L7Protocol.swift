import SidecarModel

/// How a service's requests are read so each can be decided by L7 intentions (proxy config
/// `protocol`); a `tcp` service has none and is decided per connection only.
enum L7Protocol: Sendable, Equatable {
    /// HTTP/1.1 (NIOHTTP1, HTTPRequestFilter).
    case http
    /// HTTP/2 with prior knowledge (HTTP2RequestFilter); denials are 403s unless the request is gRPC.
    case http2
    /// HTTP/2 carrying gRPC: every denial is a gRPC PERMISSION_DENIED.
    case grpc

    init?(configProtocol: String) {
        switch configProtocol {
        case "http": self = .http
        case "http2": self = .http2
        case "grpc": self = .grpc
        default: return nil
        }
    }
}

/// How L7 listeners read requests before deciding them (proxy config, see ProxyConfig).
struct HTTPRequestOptions: Sendable, Equatable {
    var paths = PathNormalization()
    var underscores = UnderscoreHeaders.allow
}
