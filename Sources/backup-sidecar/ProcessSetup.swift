import Dispatch
import FoundationEssentials
import Glibc
import CSystemExtras

/// SIGHUP calls `onReload`; the first SIGTERM/SIGINT ends `firstTermination()` (also when it
/// arrived before anyone waited); later ones call `onLaterTermination`.
/// `@unchecked Sendable`: its mutable state is touched only on its private serial queue.
final class SignalHandling: @unchecked Sendable {
    private let queue = DispatchQueue(label: "backup-sidecar.signals")
    private var sources: [DispatchSourceSignal] = []
    // Touched only on `queue`.
    private var terminated = false
    private var waiter: CheckedContinuation<Void, Never>?
    private var laterHandler: (@Sendable () -> Void)?
    private var reloadHandler: (@Sendable () -> Void)?

    var onLaterTermination: (@Sendable () -> Void)? {
        get { queue.sync { laterHandler } }
        set { queue.sync { laterHandler = newValue } }
    }

    var onReload: (@Sendable () -> Void)? {
        get { queue.sync { reloadHandler } }
        set { queue.sync { reloadHandler = newValue } }
    }

    init() {
        for sig in [SIGHUP, SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [unowned self] in
                if sig == SIGHUP { return reloadHandler?() ?? () }
                if terminated { return laterHandler?() ?? () }
                terminated = true
                waiter?.resume()
                waiter = nil
            }
            source.resume()
            sources.append(source)
        }
    }

    func firstTermination() async {
        await withCheckedContinuation { continuation in
            queue.async {
                if self.terminated { continuation.resume() } else { self.waiter = continuation }
            }
        }
    }
}

/// A closed stdout/stderr pipe (a log shipper that went away) must be an EPIPE the writers
/// shrug off, not a signal that kills the process and every transfer through it. Set first
/// thing: startup logs come before NIO ignores SIGPIPE itself.
enum BrokenPipes {
    static func ignore() { signal(SIGPIPE, SIG_IGN) }
}

/// glibc hands buffers above 128 KiB out as fresh mmaps and returns freed heap to the kernel
/// eagerly; a proxy recycling 64-256 KiB buffers then spends ~10% of its time in page faults.
/// Keeping them on the heap (and capping arenas) trades a little idle RSS for throughput.
enum MemoryTuning {
    static func apply() {
        _ = mallopt(M_MMAP_THRESHOLD, 8 << 20)
        _ = mallopt(M_TRIM_THRESHOLD, 64 << 20)
        _ = mallopt(M_ARENA_MAX, 4)
    }
}
