import Dispatch
import Foundation
import Logging

/// File mode's intentions source: re-reads the intentions file when its content changes
/// (checked every `interval`) or on demand (SIGHUP), and hands each new set to `apply`.
/// A file that fails to decode is logged and ignored: the last good intentions stay in force.
public final class IntentionsFileSource: @unchecked Sendable {
    private let path: String
    private let defaultAction: IntentionAction
    private let logger: Logger
    private let apply: @Sendable (IntentionSet) -> Void
    private let queue = DispatchQueue(label: "backup-sidecar.intentions-file")
    private var timer: DispatchSourceTimer?
    // Touched only on `queue`.
    private var lastContent: Data?

    public init(path: String, defaultAction: IntentionAction, logger: Logger,
                apply: @escaping @Sendable (IntentionSet) -> Void) {
        self.path = path
        self.defaultAction = defaultAction
        self.logger = logger
        self.apply = apply
    }

    /// Loads the file now (throwing on a bad file: at startup that is a configuration error),
    /// then watches it.
    public func start(interval: DispatchTimeInterval = .seconds(1)) throws -> IntentionSet {
        let initial: IntentionSet = try queue.sync {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigError(source: path, path: "", message: "cannot read file")
            }
            let set = IntentionSet(try IntentionsFile.decode(data, source: path), defaultAction: defaultAction)
            lastContent = data
            return set
        }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { [weak self] in self?.check() }
        timer.resume()
        self.timer = timer
        return initial
    }

    /// Re-reads the file now (SIGHUP).
    public func reload() {
        queue.async { self.check(force: true) }
    }

    public func stop() {
        timer?.cancel()
        timer = nil
    }

    private func check(force: Bool = false) {
        guard let data = FileManager.default.contents(atPath: path) else {
            logger.error("intentions file unreadable; keeping the last good intentions", metadata: ["file": "\(path)"])
            return
        }
        guard force || data != lastContent else { return }
        lastContent = data
        do {
            let set = IntentionSet(try IntentionsFile.decode(data, source: path), defaultAction: defaultAction)
            apply(set)
        } catch {
            logger.error("intentions file rejected; keeping the last good intentions", metadata: ["error": "\(error)"])
        }
    }
}
