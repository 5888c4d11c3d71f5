import FoundationEssentials
import NIOHTTP1
import SidecarHTTP
import SidecarModel

/// Dispatches Consul API paths to the endpoint handlers and turns errors into Consul's
/// plain-text error responses.
struct Router: Sendable {
    let engine: AgentEngine

    /// Every answer carries the ACL default policy, as Consul's do.
    func handle(_ request: HTTPRequest) async -> HTTPResponse {
        var response = await dispatch(request)
        response.headers.append(("X-Consul-Default-ACL-Policy", engine.aclDefaultAction.rawValue))
        return response
    }

    private func dispatch(_ request: HTTPRequest) async -> HTTPResponse {
        do {
            guard request.segments.first == "v1" else { throw HTTPError.notFound("404 page not found") }
            let segments = Array(request.segments.dropFirst())
            // Login needs no token (it is how one gets one); anything else resolves its token first.
            let access = segments == ["acl", "login"]
                ? ACLAccess(grant: .management, accessorID: "", node: engine.configuration.nodeName)
                : try engine.access(for: Self.token(of: request))
            let route = Route(request: request, segments: segments, access: access,
                              tenancy: try Route.tenancy(of: request, enterprise: engine.configuration.enterprise))
            if let response = try await AgentEndpoints(engine: engine).handle(route) { return response }
            if let response = try await ConnectEndpoints(engine: engine).handle(route) { return response }
            if let response = try await ConfigEndpoints(engine: engine).handle(route) { return response }
            if let response = try await ACLEndpoints(engine: engine).handle(route) { return response }
            throw HTTPError.notFound("404 page not found")
        } catch let error as HTTPError {
            return .text(HTTPResponseStatus(statusCode: error.status), error.message)
        } catch {
            engine.logger.error("dev agent: request failed", metadata: ["error": "\(error)"])
            return .text(.internalServerError, "\(error)")
        }
    }

    /// `?token=`, else `X-Consul-Token`, else `Authorization: Bearer`.
    static func token(of request: HTTPRequest) -> String? {
        if let token = request.queryValue("token"), !token.isEmpty { return token }
        if let token = request.headers.first(name: "X-Consul-Token"), !token.isEmpty { return token }
        if let authorization = request.headers.first(name: "Authorization"),
           authorization.lowercased().hasPrefix("bearer ") {
            return String(authorization.dropFirst("bearer ".count)).trimmingWhitespace()
        }
        return nil
    }
}

/// One request being matched against path patterns.
struct Route: Sendable {
    let request: HTTPRequest
    let segments: [String]
    /// What the request's token may do; endpoints check it as Consul's do.
    let access: ACLAccess
    /// The namespace and partition asked for (always default on a CE agent).
    let tenancy: Tenancy

    /// `?ns=` / `?partition=` (or the X-Consul-Namespace/-Partition headers). Consul CE
    /// refuses any of them, even "default", with these words; Enterprise takes a name and
    /// defaults to "default".
    static func tenancy(of request: HTTPRequest, enterprise: Bool) throws -> Tenancy {
        let namespace = request.queryValue("ns").flatMap { $0.isEmpty ? nil : $0 }
        let partition = request.queryValue("partition").flatMap { $0.isEmpty ? nil : $0 }
        let namespaceHeader = request.headers.first(name: "X-Consul-Namespace").flatMap { $0.isEmpty ? nil : $0 }
        let partitionHeader = request.headers.first(name: "X-Consul-Partition").flatMap { $0.isEmpty ? nil : $0 }
        guard enterprise else {
            if namespaceHeader != nil {
                throw HTTPError.badRequest("Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature")
            }
            if namespace != nil {
                throw HTTPError.badRequest("Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature")
            }
            if partitionHeader != nil {
                throw HTTPError.badRequest("Invalid header: \"X-Consul-Partition\" - Partitions are a Consul Enterprise feature")
            }
            if partition != nil {
                throw HTTPError.badRequest("Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature")
            }
            return .default
        }
        // No wildcard: the dev agent does not list across namespaces.
        return try Tenancy(namespace: namespace ?? namespaceHeader ?? "default",
                           partition: partition ?? partitionHeader ?? "default").validated()
    }

    func matches(_ pattern: String...) -> Bool {
        pattern == segments
    }

    /// The segment after `prefix` when the path is exactly `prefix` plus one non-empty segment.
    func parameter(after prefix: String...) -> String? {
        guard segments.count == prefix.count + 1, Array(segments.prefix(prefix.count)) == prefix else { return nil }
        return segments.last
    }

    /// 405 for a known path with the wrong method.
    func require(_ methods: HTTPMethod...) throws {
        guard methods.contains(request.method) else {
            throw HTTPError(status: 405, message: "method \(request.method.rawValue) not allowed")
        }
    }

    /// `?index=N&wait=D` as Consul parses them: wait defaults to 5 min, is capped at 10 min
    /// and gets up to wait/16 of jitter.
    func blocking() throws -> (index: UInt64, wait: Duration) {
        var index: UInt64 = 0
        if let text = request.queryValue("index") {
            guard let value = UInt64(text) else { throw HTTPError.badRequest("Invalid index") }
            index = value
        }
        return (index, try waitDuration())
    }

    func waitDuration() throws -> Duration {
        var seconds = 300.0
        if let text = request.queryValue("wait") {
            if text == "0" || text == "0s" {
                seconds = 300
            } else {
                guard Double(text) == nil, let nanoseconds = ConfigDuration.parse(text) else {
                    throw HTTPError.badRequest("Invalid wait time")
                }
                seconds = min(Double(nanoseconds) / 1e9, 600)
            }
        }
        seconds += Double.random(in: 0...(seconds / 16))
        return .milliseconds(Int64(seconds * 1000))
    }
}
