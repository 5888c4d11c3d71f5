import Dispatch

/// The process's entry point: the command runs as a task while the main thread waits for it.
/// Swift's async main would hand the main thread to dispatch_main(), which ends it with
/// pthread_exit(). That unwinds the main thread's stack through the binary's unwind tables,
/// and the lookups, at the kernel's 64 KiB fault-around, left about 850 KiB of eh_frame
/// resident for the life of the process. The task is detached: `main` is main-actor isolated,
/// and the main queue is never serviced while its thread waits. So nothing in this program may
/// use the main actor or the main queue: it would wait for ever, without an error.
@main
enum Entry {
    static func main() {
        let finished = DispatchSemaphore(value: 0)
        Task.detached {
            await BackupSidecar.main()
            finished.signal()
        }
        finished.wait()
    }
}
