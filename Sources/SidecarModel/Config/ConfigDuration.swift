/// Durations as Consul writes them in proxy config: a Go duration string ("90s", "30m",
/// "1h30m", "1.5h", "250ms") or a plain number of seconds.
import FoundationEssentials

package enum ConfigDuration {
    /// Longest suffix first, so "ms" is not read as "m" followed by garbage.
    private static let units: [(suffix: String, nanoseconds: Double)] = [
        ("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9),
    ].sorted { $0.0.count > $1.0.count }

    /// Nanoseconds, or nil when the text is not a positive duration.
    package static func parse(_ text: String) -> Int64? {
        let trimmed = text.trimmingWhitespace()
        if let seconds = Double(trimmed) {
            return seconds > 0 && seconds < 1e9 ? Int64(seconds * 1e9) : nil
        }
        var rest = Substring(trimmed)
        var total = 0.0
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            guard let unit = units.first(where: { rest.hasPrefix($0.suffix) }) else { return nil }
            rest = rest.dropFirst(unit.suffix.count)
            total += value * unit.nanoseconds
        }
        return total >= 1 && total < 1e18 ? Int64(total) : nil
    }
}

