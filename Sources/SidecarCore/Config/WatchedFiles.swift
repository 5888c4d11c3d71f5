import Dispatch
import FoundationEssentials
import Logging
import SidecarModel

/// A value kept in sync with files (file mode). `load()` reads and parses them once (a bad
/// file is a startup error); after `watch()` they are re-read every `interval` and on
/// `reload()` (SIGHUP), and when their content differs from what was last seen, the new value
/// is parsed and handed to `apply`. A version that fails to parse or apply is logged and
/// skipped: the last good value stays in force. Content comparison (not mtime) catches
/// same-second rewrites; reads happen on a private queue, never on an event loop.
/// `@unchecked Sendable`: its mutable state is touched only on its private serial queue.
package final class WatchedFiles<Value: Sendable>: @unchecked Sendable {
    private let paths: [String]
    private let logger: Logger
    private let rejection: String
    private let rejectionLevel: Logger.Level
    private let parse: @Sendable ([Data]) throws -> Value
    private let apply: @Sendable (Value) throws -> Void
    private let queue = DispatchQueue(label: "backup-sidecar.watched-files")
    // Touched only on `queue`.
    private var timer: DispatchSourceTimer?
    private var last: [Data]?

    /// - Parameter rejection: the log message (and level) when a changed version is not applied.
    init(paths: [String], logger: Logger, rejection: String, rejectionLevel: Logger.Level,
         parse: @escaping @Sendable ([Data]) throws -> Value, apply: @escaping @Sendable (Value) throws -> Void) {
        self.paths = paths
        self.logger = logger
        self.rejection = rejection
        self.rejectionLevel = rejectionLevel
        self.parse = parse
        self.apply = apply
    }

    /// Reads and parses the files now; throws for an unreadable or invalid version.
    package func load() throws -> Value {
        let contents = try read()
        let value = try parse(contents)
        queue.sync { last = contents }
        return value
    }

    /// Starts polling for changes after what `load()` read (start once the sidecar runs, so
    /// nothing polls in the background while startup can still fail).
    package func watch(interval: DispatchTimeInterval = .seconds(1)) {
        queue.sync {
            let timer = DispatchSource.makeTimerSource(queue: queue)
            timer.schedule(deadline: .now() + interval, repeating: interval)
            timer.setEventHandler { [weak self] in self?.check(force: false) }
            timer.resume()
            self.timer = timer
        }
    }

    /// `load()` then `watch()`.
    package func start(interval: DispatchTimeInterval = .seconds(1)) throws -> Value {
        let value = try load()
        watch(interval: interval)
        return value
    }

    /// Re-reads now (SIGHUP), applying the files even if unchanged.
    package func reload() { queue.async { self.check(force: true) } }

    package func stop() {
        queue.sync {
            timer?.cancel()
            timer = nil
        }
    }

    private func read() throws -> [Data] {
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
            contents = try read()
        } catch {
            logger.error("watched file unreadable; keeping the last good version", metadata: ["error": "\(error)"])
            return
        }
        guard force || contents != last else { return }
        last = contents
        do {
            try apply(try parse(contents))
        } catch {
            logger.log(level: rejectionLevel, "\(rejection)", metadata: ["reason": "\(error)"])
        }
    }
}
