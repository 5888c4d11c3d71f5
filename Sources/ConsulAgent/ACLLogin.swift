import FoundationEssentials
import Logging
import SidecarCore
import SidecarModel

/// How an `ACLLogin` session logs in and renews.
package struct ACLLoginOptions: Sendable {
    /// `--login-method`: the auth method's name in Consul.
    var authMethod: String
    /// `--login-meta k=v`: sent as the login's Meta (shown on the token).
    package var meta: [String: String] = [:]
    /// Renew after this fraction of the remaining lifetime of the ACL token or the JWT.
    var renewFraction = 0.8
    /// ... but never sooner than this after a login (seconds).
    var minimumRenewDelay: Double = 5
    /// Jittered exponential backoff between failed logins (seconds).
    var retryBase: Double = 1
    var retryCap: Double = 60

    package init(authMethod: String) {
        self.authMethod = authMethod
    }
}

/// A token from `/v1/acl/login` and when to replace it.
struct LoggedInToken: Sendable {
    var secretID: String
    var accessorID: String
    var renewAt: Date?
}

/// The ACL token from `POST /v1/acl/login`, used for every Consul call: logs in on first use,
/// renews before the token or the JWT expires and then logs the old token out, logs in again
/// at once when the agent no longer knows the token, and logs out at shutdown. A failed
/// renewal keeps the last token in use while retrying with backoff. Neither the JWT nor the
/// token is ever logged or put in an error.
package actor ACLLogin: ConsulTokenSource {
    private let options: ACLLoginOptions
    private let bearer: any BearerTokenProvider
    private let logger: Logger
    private let metrics: SidecarMetrics?
    private var current: LoggedInToken?
    /// The last login failure, while no token is held; callers fail fast with it until the
    /// renewal loop's next attempt instead of each starting a login.
    private var lastFailure: String?
    private var inflight: Task<LoggedInToken, any Error>?
    private var loop: Task<Void, Never>?
    private var sleeper: Task<Void, Never>?
    private var closed = false

    package init(options: ACLLoginOptions, bearer: any BearerTokenProvider, logger: Logger, metrics: SidecarMetrics?) {
        self.options = options
        self.bearer = bearer
        self.logger = logger
        self.metrics = metrics
    }

    package nonisolated var summary: String { "ACL login with auth method \(options.authMethod), \(bearer.summary)" }

    package func token(for client: ConsulClient) async throws -> String? {
        guard !closed else { throw ConsulRequestError.notLoggedIn(path: "/v1/acl/login", reason: "the client is shut down") }
        if loop == nil { loop = Task { await self.renewLoop(client) } }
        if let current { return current.secretID }
        if inflight == nil, let lastFailure { throw ConsulRequestError.notLoggedIn(path: "/v1/acl/login", reason: lastFailure) }
        do {
            return try await login(client).secretID
        } catch {
            throw ConsulRequestError.notLoggedIn(path: "/v1/acl/login", reason: "\(error)")
        }
    }

    package func rejected(_ token: String, by client: ConsulClient) async -> Bool {
        guard !closed else { return false }
        if current?.secretID == token {
            logger.warning("Consul no longer accepts the ACL token from login (expired or revoked); logging in again",
                           metadata: ["accessor_id": "\(current?.accessorID ?? "")"])
            current = nil
            lastFailure = nil
            sleeper?.cancel()
        }
        return true
    }

    package func shutdown(_ client: ConsulClient) async {
        closed = true
        loop?.cancel()
        sleeper?.cancel()
        await loop?.value
        _ = try? await inflight?.value
        if let current {
            self.current = nil
            await logout(current, client: client, why: "shutdown")
        }
    }

    // MARK: - Login and renewal

    private func renewLoop(_ client: ConsulClient) async {
        var backoff = RetryBackoff(base: options.retryBase, cap: options.retryCap)
        while !Task.isCancelled && !closed {
            if let current, let renewAt = current.renewAt, renewAt > Date() {
                await sleep(renewAt.timeIntervalSinceNow)
                continue
            }
            if current != nil && current?.renewAt == nil {
                await sleep(nil)  // no expiry: only a rejection wakes us
                continue
            }
            do {
                _ = try await login(client)
                backoff.reset()
            } catch {
                guard !Task.isCancelled && !closed else { return }
                let delay = backoff.nextDelay(randomUnit: Double.random(in: 0...1))
                logger.error("Consul ACL login failed; retrying", metadata: [
                    "auth_method": "\(options.authMethod)", "error": "\(error)", "retry_in_s": "\(delay.oneDecimal)",
                    "keeping_previous_token": "\(current != nil)",
                ])
                await sleep(delay)
            }
        }
    }

    /// One login at a time: concurrent callers share it.
    private func login(_ client: ConsulClient) async throws -> LoggedInToken {
        if let inflight { return try await inflight.value }
        let task = Task { try await self.loginAndInstall(client) }
        inflight = task
        return try await task.value
    }

    /// Installs the result before the shared task completes, so no caller that awaited it can
    /// find `current` stale (and spin on the actor asking again).
    private func loginAndInstall(_ client: ConsulClient) async throws -> LoggedInToken {
        defer { inflight = nil }
        do {
            let token = try await Self.performLogin(options: options, bearer: bearer, client: client)
            let previous = current
            current = token
            lastFailure = nil
            metrics?.consulWatchSucceeded("acl_login")
            logger.notice("logged in to Consul", metadata: [
                "auth_method": "\(options.authMethod)", "accessor_id": "\(token.accessorID)",
                "renew_at": "\(token.renewAt.map { "\($0)" } ?? "never")",
            ])
            if let previous, previous.secretID != token.secretID {
                Task { await self.logout(previous, client: client, why: "renewed") }
            }
            return token
        } catch {
            lastFailure = "\(error)"
            metrics?.consulWatchFailed("acl_login", reason: (error as? ConsulRequestError)?.kind ?? "bearer_token")
            throw error
        }
    }

    private static func performLogin(options: ACLLoginOptions, bearer: any BearerTokenProvider,
                                     client: ConsulClient) async throws -> LoggedInToken {
        let jwt = try await bearer.fetch()
        let meta = JSON.object(options.meta.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })
        let body = JSON.object([("AuthMethod", .string(options.authMethod)), ("BearerToken", .string(jwt.jwt)), ("Meta", meta)]).data
        let response = try await client.post("/v1/acl/login", body: body, token: .none)
        let answer = try decodeAnswer(response.body)
        let issued = Date()
        let expiries = [answer.expiry, jwt.expiresAt].compactMap { $0 }
        let renewAt = expiries.min().map { expiry in
            issued.addingTimeInterval(max(options.minimumRenewDelay, options.renewFraction * expiry.timeIntervalSince(issued)))
        }
        return LoggedInToken(secretID: answer.secretID, accessorID: answer.accessorID, renewAt: renewAt)
    }

    /// The token in a login answer (`structs.ACLToken`): SecretID, AccessorID and, when the
    /// auth method sets a MaxTokenTTL, ExpirationTime.
    static func decodeAnswer(_ body: Data) throws -> (secretID: String, accessorID: String, expiry: Date?) {
        guard let answer = JSONValue.parsed(body), let secretID = answer["SecretID"]?.stringValue, !secretID.isEmpty else {
            throw ConsulProxyError("/v1/acl/login: the answer has no SecretID")
        }
        return (secretID, answer["AccessorID"]?.stringValue ?? "", answer["ExpirationTime"]?.stringValue.flatMap(Timestamp.parse))
    }

    private func logout(_ token: LoggedInToken, client: ConsulClient, why: String) async {
        do {
            _ = try await client.post("/v1/acl/logout", body: nil, token: .explicit(token.secretID))
            logger.info("logged out of Consul", metadata: ["accessor_id": "\(token.accessorID)", "why": "\(why)"])
        } catch {
            logger.warning("Consul ACL logout failed (the token stays until it expires)", metadata: [
                "accessor_id": "\(token.accessorID)", "error": "\(error)",
            ])
        }
    }

    /// Sleeps `seconds` (nil: until woken); `rejected` and `shutdown` cut it short.
    private func sleep(_ seconds: Double?) async {
        let task = Task<Void, Never> {
            _ = try? await Task.sleep(for: .seconds(seconds.map { max(0, $0) } ?? 86400 * 365))
        }
        sleeper = task
        await task.value
        sleeper = nil
    }
}
