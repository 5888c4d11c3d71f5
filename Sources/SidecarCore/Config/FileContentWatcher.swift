import Dispatch
import Foundation
import Logging

/// Watches a set of files by content: every `interval` (and on `reload()`, e.g. SIGHUP) it
/// reads them, and when any differs from what it last handed over, passes all contents to
/// `onChange`. Content comparison (not mtime) catches same-second rewrites; a file that cannot
/// be read is logged and skipped until it can. Reads happen on a private queue, never on an
/// event loop.
final class FileContentWatcher: @unchecked Sendable {
    private let paths: [String]
    private let logger: Logger
    private let onChange: @Sendable ([Data]) -> Void
    private let queue = DispatchQueue(label: "backup-sidecar.file-watcher")
    private var timer: DispatchSourceTimer?
    // Touched only on `queue`.
    private var last: [Data]?

    init(paths: [String], logger: Logger, onChange: @escaping @Sendable ([Data]) -> Void) {
        self.paths = paths
        self.logger = logger
        self.onChange = onChange
    }

    /// Reads the files now; the caller loads this first version itself (startup errors are
    /// fatal there), changes after it go to `onChange`.
    func start(initial: [Data], interval: DispatchTimeInterval) {
        queue.sync { last = initial }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { [weak self] in self?.check(force: false) }
        timer.resume()
        self.timer = timer
    }

    func reload() { queue.async { self.check(force: true) } }

    func stop() {
        timer?.cancel()
        timer = nil
    }

    static func read(_ paths: [String]) throws -> [Data] {
        try paths.map { path in
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigError(source: path, path: "", message: "cannot read file")
            }
            return data
        }
    }

    private func check(force: Bool) {
        let contents: [Data]
        do {
            contents = try Self.read(paths)
        } catch {
            logger.error("watched file unreadable; keeping the last good version", metadata: ["error": "\(error)"])
            return
        }
        guard force || contents != last else { return }
        last = contents
        onChange(contents)
    }
}
