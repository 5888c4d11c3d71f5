/// Waiting in tests: on events and conditions, never for a fixed time, with margins that hold
/// on a 2-core machine busy with other work.

/// Runs `body`, then `teardown`, awaited whether `body` returned or threw. Swift has no async
/// `defer`, and a `defer { Task { ... } }` lets the next test start beside this one's
/// sidecars, agents and event loops, still stopping.
public func withTeardown<T>(_ teardown: () async -> Void, _ body: () async throws -> T) async rethrows -> T {
    let result: T
    do {
        result = try await body()
    } catch {
        await teardown()
        throw error
    }
    await teardown()
    return result
}

/// Polls until `condition` holds or `timeout` seconds pass. It returns as soon as the
/// condition holds, so the default is a margin for a loaded machine, not a wait.
public func eventually(timeout: Double = 30, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// `eventually` for a condition that has to await (a count read on an event loop, a request).
public func eventually(timeout: Double = 30, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}
