#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FoundationEssentials

/// RFC 3339 timestamps in UTC: the one formatter and parser of the package (audit lines, logs,
/// admin reports, the dev agent's Consul answers, Consul's token expiry). Built by hand: a
/// Foundation date formatter costs more than the rest of a connection's bookkeeping together,
/// and audit lines are written for every connection.
package enum Timestamp {
    package enum Precision: Sendable {
        /// "2026-11-29T09:31:01Z", as Go's time.Time marshals a whole second.
        case seconds
        /// "2026-11-29T09:31:01.513Z" (truncated, never rounded up into the next second).
        case milliseconds
    }

    package static func rfc3339(_ date: Date, _ precision: Precision = .milliseconds) -> String {
        var text = ""
        append(date, precision, to: &text)
        return text
    }

    package static func append(_ date: Date, _ precision: Precision = .milliseconds, to text: inout String) {
        var bytes: [UInt8] = []
        append(date, precision, to: &bytes)
        text += String(decoding: bytes, as: UTF8.self)
    }

    /// The same text as bytes, written digit by digit: every audit line has a timestamp, and a
    /// String per field made it a fifth of the line's formatting cost (callgrind).
    package static func append(_ date: Date, _ precision: Precision = .milliseconds, to out: inout [UInt8]) {
        // Whole microseconds first: a Double holding x.336 s may read x.33599999, and plain
        // truncation would then print .335. Below the microsecond, truncation is the rule.
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        let (seconds, microsOfSecond) = micros.floorDivided(by: 1_000_000)
        let millis = Int(microsOfSecond / 1000)
        let (days, secondOfDay) = seconds.floorDivided(by: 86_400)
        let date = civilDate(daysSince1970: days)
        appendPadded(Int(date.year), width: 4, to: &out)
        out.append(UInt8(ascii: "-"))
        appendPadded(date.month, width: 2, to: &out)
        out.append(UInt8(ascii: "-"))
        appendPadded(date.day, width: 2, to: &out)
        out.append(UInt8(ascii: "T"))
        appendPadded(Int(secondOfDay / 3600), width: 2, to: &out)
        out.append(UInt8(ascii: ":"))
        appendPadded(Int(secondOfDay / 60 % 60), width: 2, to: &out)
        out.append(UInt8(ascii: ":"))
        appendPadded(Int(secondOfDay % 60), width: 2, to: &out)
        if precision == .milliseconds {
            out.append(UInt8(ascii: "."))
            appendPadded(millis, width: 3, to: &out)
        }
        out.append(UInt8(ascii: "Z"))
    }

    /// The proleptic Gregorian date of a day counted from 1970-01-01, by arithmetic: gmtime_r
    /// took a lock and ~2K instructions per audit line. Days are shifted to start on 0000-03-01,
    /// so that a leap day ends its year; then split into 400-year eras (146,097 days each,
    /// the calendar's full cycle), years within the era, and days within the year.
    static func civilDate(daysSince1970 days: Int64) -> (year: Int64, month: Int, day: Int) {
        let shifted = days + 719_468 // days from 0000-03-01 to 1970-01-01
        let (era, dayOfEra) = shifted.floorDivided(by: 146_097)
        // Years of 365 days, less the leap days: one per 4 years, but not per 100, yet per 400.
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthFromMarch = (5 * dayOfYear + 2) / 153 // month lengths from March: 31 30 31 30 31, repeated
        let day = Int(dayOfYear - (153 * monthFromMarch + 2) / 5 + 1)
        let month = Int(monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9)
        return (era * 400 + yearOfEra + (month <= 2 ? 1 : 0), month, day)
    }

    /// A number in decimal with leading zeros up to `width` digits. One that does not fit
    /// (only a year past 9999, or before year 0) is written in full, without padding.
    package static func appendPadded(_ value: Int, width: Int, to out: inout [UInt8]) {
        var limit = 1
        for _ in 0..<width { limit *= 10 }
        guard value >= 0, value < limit else {
            JSONText.appendInteger(value, to: &out)
            return
        }
        appendDecimalDigits(of: UInt(value), fromPlace: UInt(limit / 10), to: &out)
    }

    /// Parses RFC 3339 as Consul writes it: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of up to
    /// nine digits, then `Z` or `±HH:MM`. Anything else (a missing part, a month 13, a trailing
    /// byte) is nil: a token expiry we cannot read is treated as unknown, never as far away.
    package static func parse(_ text: String) -> Date? {
        var bytes = Substring(text).utf8[...]
        func number(_ width: Int) -> Int? {
            guard bytes.count >= width else { return nil }
            var value = 0
            for byte in bytes.prefix(width) {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            bytes = bytes.dropFirst(width)
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard let byte = bytes.first, characters.utf8.contains(byte) else { return false }
            bytes = bytes.dropFirst()
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2),
              expect("Tt"), let hour = number(2), expect(":"), let minute = number(2), expect(":"),
              let second = number(2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var fraction = 0.0
        if bytes.first == UInt8(ascii: ".") {
            bytes = bytes.dropFirst()
            let digits = bytes.prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
            guard (1...9).contains(digits.count), let value = Double("0." + String(decoding: digits, as: UTF8.self))
            else { return nil }
            fraction = value
            bytes = bytes.dropFirst(digits.count)
        }
        var offset = 0
        if expect("Zz") {
            // UTC
        } else if let sign = bytes.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
            bytes = bytes.dropFirst()
            guard let hours = number(2), expect(":"), let minutes = number(2), hours < 24, minutes < 60 else { return nil }
            offset = (hours * 3600 + minutes * 60) * (sign == UInt8(ascii: "-") ? -1 : 1)
        } else {
            return nil
        }
        guard bytes.isEmpty else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        let seconds = timegm(&parts)
        // timegm normalises 31 February into March: such a date does not exist.
        guard parts.tm_mday == Int32(day), parts.tm_mon == Int32(month - 1) else { return nil }
        return Date(timeIntervalSince1970: Double(seconds - offset) + fraction)
    }
}

extension Int64 {
    /// Quotient rounded toward minus infinity, and a remainder in 0..<divisor.
    func floorDivided(by divisor: Int64) -> (quotient: Int64, remainder: Int64) {
        let (quotient, remainder) = quotientAndRemainder(dividingBy: divisor)
        return remainder < 0 ? (quotient - 1, remainder + divisor) : (quotient, remainder)
    }
}
