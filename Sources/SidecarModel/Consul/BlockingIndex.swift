import FoundationEssentials

/// The `?index=` to send on the next blocking query, following the client rules in Consul's
/// "Blocking Queries" documentation (website/content/api-docs/features/blocking.mdx):
///
/// - use the `X-Consul-Index` of the last response;
/// - if it went backwards (snapshot restore, a Consul upgrade, ...), reset to 0: the next
///   request does not block and re-reads the current state, restarting the loop;
/// - otherwise never block on an index below 1: a 0 index after a response (a Consul bug on
///   some versions) would turn the loop into a busy loop, and index 1 is always safe;
/// - a response without the header keeps the index we had (raised to 1 by the rule above, so
///   a missing header cannot cause a busy loop either).
///
/// 0 means "do not block" (send no `index`, or `index=0`). Pure value type, no I/O.
package struct BlockingIndex: Equatable, Sendable {
    /// The index for the next request; 0 before the first response and after a reset.
    package private(set) var current: UInt64

    package init(current: UInt64 = 0) {
        self.current = current
    }

    /// Whether the next request blocks.
    package var isBlocking: Bool { current > 0 }

    /// Records one successful response and returns the index for the next request.
    /// `responseIndex` is the parsed `X-Consul-Index` header, nil when absent or unparsable.
    @discardableResult
    package mutating func next(responseIndex: UInt64?) -> UInt64 {
        guard let responseIndex else {
            current = max(current, 1)
            return current
        }
        // Raise 0 to 1 first: a server stuck answering 0 then keeps us blocking on 1 instead
        // of alternating between 1 and a non-blocking reset.
        let index = max(responseIndex, 1)
        current = index < current ? 0 : index
        return current
    }

    /// Forget the index (e.g. after an ACL token or agent change): the next request reads fresh.
    package mutating func reset() {
        current = 0
    }

    /// Parses an `X-Consul-Index` header value: decimal digits only (surrounding spaces
    /// allowed); anything else is nil, which `next(responseIndex:)` treats as a missing header.
    package static func parseHeader(_ value: String?) -> UInt64? {
        guard let trimmed = value?.trimmingWhitespace(), !trimmed.isEmpty,
              trimmed.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
        else { return nil }
        return UInt64(trimmed)
    }
}

/// Delays between retries of a failing Consul request: exponential from `base`, capped at
/// `cap`, each delay drawn from [0.5, 1.0] of the exponential value so that many sidecars
/// restarting together do not retry in lockstep. Seconds. Pure: the caller supplies the random
/// number, so tests are deterministic.
package struct RetryBackoff: Equatable, Sendable {
    let base: Double
    let cap: Double
    /// Failures since the last `reset()`.
    private(set) var attempt: Int = 0

    /// A non-positive or non-finite `base` becomes 0 (no delay); `cap` is raised to `base`
    /// when below it, and a non-finite `cap` (no sane upper bound) is replaced by `base`.
    package init(base: Double, cap: Double) {
        let base = base.isFinite && base > 0 ? base : 0
        self.base = base
        self.cap = cap.isFinite ? max(cap, base) : max(base, 0)
    }

    /// The un-jittered delay for the next call: `base * 2^attempt`, at most `cap`.
    var currentCeiling: Double {
        // 2^attempt overflows to infinity long after it passed any sane cap; min() handles it.
        min(cap, base * Double(sign: .plus, exponent: attempt, significand: 1))
    }

    /// The delay before the next retry. `randomUnit` is a uniform draw from [0, 1]; values
    /// outside are clamped and NaN counts as 1 (the longer delay).
    package mutating func nextDelay(randomUnit: Double) -> Double {
        let unit = randomUnit.isNaN ? 1 : min(max(randomUnit, 0), 1)
        let ceiling = currentCeiling
        // Stop counting once capped so the exponent stays small.
        if ceiling < cap { attempt += 1 }
        return ceiling * (0.5 + 0.5 * unit)
    }

    /// After a success: the next failure starts again from `base`.
    package mutating func reset() {
        attempt = 0
    }
}
