/// What the L7 filter does with header names containing `_` (Consul's
/// `HeadersWithUnderscoresAction`): a service that maps `X_Job` and `X-Job` to the same
/// variable (CGI, many frameworks) would otherwise see a header the rules did not.
package enum UnderscoreHeaders: String, Sendable, Equatable, CaseIterable {
    case allow
    /// 400 (HTTP/2: the stream is refused).
    case reject
    /// Removed before rules see the request and before it is forwarded.
    case drop
}
