import FoundationEssentials
import Logging
import NIOCore
import SidecarCore
import SidecarModel

/// Timing of every watch. Production uses Consul's defaults; tests shorten them.
struct WatchTiming: Sendable {
    /// `?wait=` sent with blocking queries (Consul: default 5 min, max 10 min).
    var wait: TimeAmount = .minutes(5)
    /// Error backoff: exponential from `retryBase` up to `retryCap`, jittered.
    var retryBase: Double = 1
    var retryCap: Double = 60
    /// At least this long between the starts of two requests of one watch, even when every
    /// answer comes back at once (an index that keeps moving, an agent answering without
    /// blocking): Consul asks clients to rate-limit blocking loops. A change is still applied
    /// the moment it arrives; only the next request waits.
    var minInterval: TimeAmount = .seconds(1)

    init() {}

    /// Query value in Go duration syntax.
    var waitParameter: String { "\(max(1, wait.nanoseconds / 1_000_000_000))s" }
    /// The whole call may take the wait, Consul's wait/16 jitter, and slack for a slow answer.
    var requestTimeout: TimeAmount { wait + .nanoseconds(wait.nanoseconds / 16) + .seconds(10) }
}

/// One long-running blocking query against one endpoint, following Consul's client rules:
/// index or content-hash blocking, the index reset when it goes backwards, jittered exponential
/// backoff on errors. A failed or unusable answer is logged and counted and the last good value
/// stays in force: `onChange` only ever sees decoded values.
struct BlockingWatch<Value: Sendable>: Sendable {
    enum Mode: Sendable {
        /// `?index=` from `X-Consul-Index`.
        case index
        /// `?hash=` from `X-Consul-ContentHash` (`/v1/agent/service/:id`).
        case contentHash
    }

    /// Short name for logs and metrics, e.g. "leaf", "roots", "upstream:storage".
    var name: String
    var path: String
    var query: [(String, String)] = []
    var mode: Mode = .index
    var client: ConsulClient
    var timing: WatchTiming
    var logger: Logger
    var metrics: SidecarMetrics?
    var decode: @Sendable (ConsulResponse) throws -> Value

    /// Runs until the task is cancelled. `onChange` runs for the first answer and every answer
    /// whose index or hash moved.
    func run(onChange: @Sendable (Value) async -> Void) async {
        var index = BlockingIndex()
        var hash: String?
        // The X-Consul-Index of the answer last handed to onChange: after an index reset the
        // re-read usually repeats it, and must not be delivered twice.
        var deliveredIndex: UInt64?
        var backoff = RetryBackoff(base: timing.retryBase, cap: timing.retryCap)
        var failing = false
        var lastStart: ContinuousClock.Instant?
        while !Task.isCancelled {
            if let lastStart {
                let next = lastStart + .nanoseconds(timing.minInterval.nanoseconds)
                if next > .now { try? await Task.sleep(until: next, clock: .continuous) }
            }
            lastStart = .now
            do {
                let response = try await client.get(path, query: query + blockingParameters(index: index, hash: hash),
                                                    timeout: timing.requestTimeout)
                let changed: Bool
                switch mode {
                case .index:
                    index.next(responseIndex: response.index)
                    changed = deliveredIndex == nil || response.index != deliveredIndex
                case .contentHash:
                    let newHash = response.contentHash ?? Self.bodyHash(response)
                    changed = hash == nil || newHash != hash
                    hash = newHash
                }
                if changed {
                    let value: Value
                    do {
                        value = try decode(response)
                    } catch {
                        // Do not move past an answer we could not use: retry it with backoff.
                        index.reset()
                        hash = nil
                        throw WatchDecodeError(underlying: error)
                    }
                    deliveredIndex = response.index
                    await onChange(value)
                }
                metrics?.consulWatchSucceeded(name)
                backoff.reset()
                if failing {
                    logger.notice("Consul watch recovered", metadata: ["watch": "\(name)"])
                    failing = false
                }
            } catch {
                if Task.isCancelled { return }
                let reason = (error as? ConsulRequestError)?.kind ?? "malformed"
                metrics?.consulWatchFailed(name, reason: reason)
                let delay = backoff.nextDelay(randomUnit: Double.random(in: 0...1))
                logger.warning("Consul watch failed; keeping the last good state", metadata: [
                    "watch": "\(name)", "error": "\(error)", "retry_in_s": "\(delay.oneDecimal)",
                ])
                failing = true
                try? await Task.sleep(for: .seconds(delay))
            }
        }
    }

    private func blockingParameters(index: BlockingIndex, hash: String?) -> [(String, String)] {
        switch mode {
        case .index where index.isBlocking:
            return [("index", "\(index.current)"), ("wait", timing.waitParameter)]
        case .contentHash:
            guard let hash else { return [] }
            return [("hash", hash), ("wait", timing.waitParameter)]
        default:
            return []
        }
    }

    /// A hash-blocking endpoint that sent no header: the body's own ContentHash field.
    private static func bodyHash(_ response: ConsulResponse) -> String? {
        JSONValue.parsed(response.body)?["ContentHash"]?.stringValue
    }
}

struct WatchDecodeError: Error, CustomStringConvertible {
    var underlying: any Error
    var description: String { "unusable answer: \(underlying)" }
}
