import FoundationEssentials
import NIOConcurrencyHelpers

/// Everything the agent knows. One raft-like index orders all writes; each table remembers the
/// index of its last write so blocking endpoints can answer "has anything I show changed?"
/// (deletes included, which object ModifyIndexes alone would miss).
struct AgentState {
    var index: UInt64 = 1
    var services: [String: ServiceRecord] = [:]
    var checks: [String: CheckRecord] = [:]
    var servicesIndex: UInt64 = 1
    var checksIndex: UInt64 = 1
    var configEntries: [ConfigEntryKey: ConfigEntryRecord] = [:]
    var configIndex: UInt64 = 1
    var ca: CAState
    var leaves: [LeafKey: LeafRecord] = [:]
    /// Test fault: leaf reads still to be answered with an expired leaf, as an agent whose
    /// renewal ran late would answer.
    var expiredLeafReads = 0
    /// ACL tokens minted by /v1/acl/login: SecretID -> token.
    var loginTokens: [String: LoginToken] = [:]
    /// Auth methods for /v1/acl/login, by name.
    var authMethods: [String: RegisteredAuthMethod] = [:]
    var loginCount = 0

    /// Takes the next index for a write.
    mutating func nextIndex() -> UInt64 {
        index += 1
        return index
    }
}

/// The state behind a lock, plus the wake-up list of blocking queries. Every write bumps the
/// index and resumes every waiter; each waiter then re-reads its endpoint and decides whether
/// to answer or wait again.
final class AgentStore: Sendable {
    private struct Waiters {
        var pending: [Int: CheckedContinuation<Void, Never>] = [:]
        /// Timeouts or cancellations that fired before their waiter registered.
        var firedEarly: Set<Int> = []
        var nextID = 0
    }

    private let state: NIOLockedValueBox<AgentState>
    private let waiters = NIOLockedValueBox(Waiters())

    init(_ initial: AgentState) {
        state = NIOLockedValueBox(initial)
    }

    func read<T>(_ body: (AgentState) throws -> T) rethrows -> T {
        try state.withLockedValue { try body($0) }
    }

    /// A write: runs `body` (which takes indexes with `nextIndex()`) and wakes blocked
    /// queries when the index moved.
    @discardableResult
    func write<T>(_ body: (inout AgentState) throws -> T) rethrows -> T {
        let (result, changed) = try state.withLockedValue { state -> (T, Bool) in
            let before = state.index
            let result = try body(&state)
            return (result, state.index != before)
        }
        if changed { wakeAll() }
        return result
    }

    private func wakeAll() {
        let woken = waiters.withLockedValue { waiters -> [CheckedContinuation<Void, Never>] in
            defer { waiters.pending.removeAll() }
            return Array(waiters.pending.values)
        }
        woken.forEach { $0.resume() }
    }

    private func fire(_ id: Int) {
        let continuation = waiters.withLockedValue { waiters -> CheckedContinuation<Void, Never>? in
            if let continuation = waiters.pending.removeValue(forKey: id) { return continuation }
            waiters.firedEarly.insert(id)
            return nil
        }
        continuation?.resume()
    }

    /// Returns after the next write following `seenIndex`, at `deadline`, or on cancellation,
    /// whichever comes first.
    func waitForWrite(after seenIndex: UInt64, until deadline: ContinuousClock.Instant) async {
        let id = waiters.withLockedValue { waiters -> Int in
            waiters.nextID += 1
            return waiters.nextID
        }
        let timer = Task { [weak self] in
            try? await Task.sleep(until: deadline, clock: .continuous)
            self?.fire(id)
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // The index is read under the waiters lock: a write that lands after this check
                // wakes waiters only after it, so it finds this one registered.
                let resumeNow = waiters.withLockedValue { waiters -> Bool in
                    let currentIndex = state.withLockedValue { $0.index }
                    if waiters.firedEarly.remove(id) != nil || currentIndex != seenIndex { return true }
                    waiters.pending[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            fire(id)
        }
        timer.cancel()
        waiters.withLockedValue { _ = $0.firedEarly.remove(id) }
    }

    /// The blocking-query loop: `view` returns the endpoint's index and answer; with
    /// `minIndex` > 0 the call waits until that index exceeds `minIndex` or the wait ends.
    func blockingRead<T>(minIndex: UInt64, wait: Duration, _ view: (AgentState) throws -> (UInt64, T)) async throws -> (UInt64, T) {
        let deadline = ContinuousClock.now + wait
        while true {
            let (global, (index, answer)) = try state.withLockedValue { state in (state.index, try view(state)) }
            if minIndex == 0 || index > minIndex || ContinuousClock.now >= deadline || Task.isCancelled {
                return (max(index, 1), answer)
            }
            await waitForWrite(after: global, until: deadline)
        }
    }
}
