import CSystemExtras
import Glibc

/// A mutex with one condition variable: what the audit sink's callers and its writer thread
/// wait on. pthreads directly, not Foundation's `NSCondition`: the binary links no Foundation.
/// `@unchecked Sendable`: the pthread objects are the synchronisation; they never move.
final class AuditCondition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    /// Called with the lock held; returns with it held again.
    func wait() { pthread_cond_wait(condition, mutex) }
    func broadcast() { pthread_cond_broadcast(condition) }
}

/// What a new thread runs; handed to it once, then released.
private final class ThreadStart: Sendable {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
}

/// Starts a detached thread named `name` (at most 15 bytes show in `ps`) that runs `body`.
/// Throws when the system cannot create a thread (a process or memory limit).
func startDetachedThread(name: String, _ body: @escaping @Sendable () -> Void) throws {
    let start = Unmanaged.passRetained(ThreadStart(name: name, body: body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let result = pthread_create(&thread, &attributes, { context in
        let start = Unmanaged<ThreadStart>.fromOpaque(context!).takeRetainedValue()
        _ = bs_set_thread_name(start.name)
        start.body()
        return nil
    }, start)
    if result != 0 {
        Unmanaged<ThreadStart>.fromOpaque(start).release()
        throw SidecarError.threadStartFailed(name: name, reason: String(cString: strerror(result)))
    }
}
