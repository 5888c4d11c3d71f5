import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers

/// File mode's intentions source: re-reads the intentions file when its content changes
/// (checked every `interval`) or on demand (SIGHUP), and hands each new set to `apply`.
/// A file that fails to decode is logged and ignored: the last good intentions stay in force.
public final class IntentionsFileSource: Sendable {
    private let path: String
    private let defaultAction: IntentionAction
    private let logger: Logger
    private let watcher: FileContentWatcher
    private let loaded = NIOLockedValueBox<[Data]?>(nil)

    public init(path: String, defaultAction: IntentionAction, logger: Logger,
                apply: @escaping @Sendable (IntentionSet) -> Void) {
        self.path = path
        self.defaultAction = defaultAction
        self.logger = logger
        watcher = FileContentWatcher(paths: [path], logger: logger) { contents in
            do {
                apply(IntentionSet(try IntentionsFile.decode(contents[0], source: path), defaultAction: defaultAction))
            } catch {
                logger.error("intentions file rejected; keeping the last good intentions", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Loads the file now; a bad file is a startup error.
    public func load() throws -> IntentionSet {
        let contents = try FileContentWatcher.read([path])
        let set = IntentionSet(try IntentionsFile.decode(contents[0], source: path), defaultAction: defaultAction)
        loaded.withLockedValue { $0 = contents }
        return set
    }

    /// Starts watching for changes after what `load()` read.
    public func watch(interval: DispatchTimeInterval = .seconds(1)) {
        watcher.start(initial: loaded.withLockedValue { $0 } ?? [], interval: interval)
    }

    /// `load()` then `watch()`.
    public func start(interval: DispatchTimeInterval = .seconds(1)) throws -> IntentionSet {
        let set = try load()
        watch(interval: interval)
        return set
    }

    /// Re-reads the file now (SIGHUP), applying it even if unchanged.
    public func reload() { watcher.reload() }

    public func stop() { watcher.stop() }
}
