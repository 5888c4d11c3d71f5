import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import SidecarCore
import SidecarModel

/// One JSON object per log line on stderr, for log shippers (Azure Monitor, Splunk):
/// `{"ts", "level", "logger", "message", ...metadata}`.
struct JSONLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    let label: String
    private static let lock = NIOLock()

    init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: String] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { object[key] = "\(value)" }
        if let error = event.error { object["error"] = "\(error)" }
        object["ts"] = Timestamp.rfc3339(Date())
        object["level"] = event.level.rawValue
        object["logger"] = label
        object["message"] = event.message.description
        let line = JSON.object(object.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }).serialized() + "\n"
        // One write per line under the lock: lines from different threads never interleave.
        Self.lock.withLock { StandardError.write(line) }
    }
}
