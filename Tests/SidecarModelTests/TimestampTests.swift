import Foundation
import Testing
import TestSupport
@testable import SidecarModel

/// The one RFC 3339 formatter and parser. Foundation's ISO 8601 formatter is the independent
/// reference: both must agree on every instant we print and on every text we read.
@Suite struct TimestampTests {
    @Test("formats UTC with milliseconds or whole seconds", arguments: [
        (0.0, "1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00Z"),
        (1_700_000_000.0, "2023-11-14T22:13:20.000Z", "2023-11-14T22:13:20Z"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500Z", "2023-11-14T22:13:20Z"),
        (1_700_000_000.999_9, "2023-11-14T22:13:20.999Z", "2023-11-14T22:13:20Z"),
        (951_782_400.75, "2000-02-29T00:00:00.750Z", "2000-02-29T00:00:00Z"),
        (4_102_444_799.0, "2099-12-31T23:59:59.000Z", "2099-12-31T23:59:59Z"),
        // The ends of four-digit years, and past them (written the plain way).
        (-62_167_219_200.0, "0000-01-01T00:00:00.000Z", "0000-01-01T00:00:00Z"),
        (253_402_300_799.5, "9999-12-31T23:59:59.500Z", "9999-12-31T23:59:59Z"),
        (253_402_300_800.0, "10000-01-01T00:00:00.000Z", "10000-01-01T00:00:00Z"),
        (-62_135_596_800.25, "0000-12-31T23:59:59.750Z", "0000-12-31T23:59:59Z"),
    ])
    func formats(seconds: Double, milliseconds: String, whole: String) {
        let date = Date(timeIntervalSince1970: seconds)
        #expect(Timestamp.rfc3339(date) == milliseconds)
        #expect(Timestamp.rfc3339(date, .seconds) == whole)
    }

    @Test("agrees with Foundation's ISO 8601 formatter on 5,000 generated instants, both ways")
    func differential() throws {
        let reference = ISO8601DateFormatter()
        reference.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var random = SplitMix64(seed: 0x7157)
        for _ in 0..<5_000 {
            // Whole milliseconds between 1970 and 2100: both sides are then exact.
            let millis = Double(random.next() % 4_102_444_800_000)
            let date = Date(timeIntervalSince1970: millis / 1000)
            let text = Timestamp.rfc3339(date)
            #expect(text == reference.string(from: date))
            let parsed = try #require(Timestamp.parse(text), "\(text)")
            #expect(abs(parsed.timeIntervalSince1970 - date.timeIntervalSince1970) < 1e-6, "\(text)")
        }
    }

    @Test("the calendar arithmetic agrees with gmtime_r from year -400 to 10400, and on every day of 1968-2105")
    func calendarAgainstGmtime() {
        func viaGmtime(_ seconds: Int64) -> String {
            var time = time_t(seconds), parts = tm()
            gmtime_r(&time, &parts)
            // A year before 0000 is written plainly ("-1"), as the formatter writes it.
            let year = Int(parts.tm_year) + 1900
            return (year < 0 ? String(year) : String(format: "%04d", year))
                + String(format: "-%02d-%02dT%02d:%02d:%02d", Int(parts.tm_mon) + 1,
                         Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
        }
        func ours(_ seconds: Int64) -> String {
            String(Timestamp.rfc3339(Date(timeIntervalSince1970: Double(seconds)), .seconds).dropLast())
        }
        var instants: [Int64] = []
        // Every day (at a varying second) across leap years, 2000, 2100 and the 32-bit edges.
        for day in Int64(-731)...Int64(49_700) { instants.append(day * 86_400 + (day * 7_919) % 86_400) }
        var random = SplitMix64(seed: 0xCA1E)
        let first: Int64 = -74_790_000_000, span: Int64 = 340_815_081_600 // -0400-01-01 to 10400-01-01
        for _ in 0..<50_000 { instants.append(first + Int64(random.next() % UInt64(span))) }
        instants += [-1, 0, 86_399, 86_400, 951_782_399, 951_782_400, 2_147_483_647, 2_147_483_648,
                     -62_167_219_200, -62_167_219_201, 253_402_300_799, 253_402_300_800]
        let disagreements = instants.filter { ours($0) != viaGmtime($0) }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(5).map { ($0, ours($0), viaGmtime($0)) })")
    }

    @Test("parses Consul's forms: nanoseconds, no fraction, offsets", arguments: [
        ("2026-01-02T03:04:05Z", 1_767_323_045.0),
        ("2026-01-02T03:04:05.123456789Z", 1_767_323_045.123456789),
        ("2026-01-02T03:04:05.5z", 1_767_323_045.5),
        ("2026-01-02t03:04:05Z", 1_767_323_045.0),
        ("2026-01-02T05:04:05+02:00", 1_767_323_045.0),
        ("2026-01-01T22:34:05-04:30", 1_767_323_045.0),
        ("2024-02-29T00:00:00Z", 1_709_164_800.0),
    ])
    func parses(text: String, seconds: Double) throws {
        let parsed = try #require(Timestamp.parse(text))
        #expect(abs(parsed.timeIntervalSince1970 - seconds) < 1e-6, "\(text)")
    }

    @Test("refuses what is not RFC 3339: an expiry we cannot read is unknown, not far away", arguments: [
        "", "2026-01-02", "2026-01-02T03:04:05", "2026-01-02 03:04:05Z", "2026-1-02T03:04:05Z",
        "2026-13-02T03:04:05Z", "2026-00-02T03:04:05Z", "2026-02-30T03:04:05Z", "2025-02-29T00:00:00Z",
        "2026-01-32T03:04:05Z", "2026-01-02T24:00:00Z", "2026-01-02T03:60:05Z", "2026-01-02T03:04:05.Z",
        "2026-01-02T03:04:05.1234567891Z", "2026-01-02T03:04:05+0200", "2026-01-02T03:04:05+02",
        "2026-01-02T03:04:05Z ", " 2026-01-02T03:04:05Z", "2026-01-02T03:04:05ZZ", "+2026-01-02T03:04:05Z",
        "２０２６-01-02T03:04:05Z", "2026-01-02T03:04:05+24:00", "99999-01-02T03:04:05Z",
    ])
    func refuses(text: String) {
        #expect(Timestamp.parse(text) == nil, "\(text)")
    }
}
