import Logging
import SidecarModel

/// File mode's intentions: the intentions file, re-read on change and on SIGHUP. A file that
/// fails to decode is logged and ignored: the last good intentions stay in force.
package typealias IntentionsFileSource = WatchedFiles<IntentionSet>

extension WatchedFiles where Value == IntentionSet {
    package convenience init(path: String, defaultAction: IntentionAction, logger: Logger,
                            apply: @escaping @Sendable (IntentionSet) -> Void) {
        self.init(paths: [path], logger: logger, rejection: "intentions file rejected; keeping the last good intentions",
                  rejectionLevel: .error,
                  parse: { IntentionSet(try IntentionsFile.decode($0[0], source: path), defaultAction: defaultAction) },
                  apply: apply)
    }
}
