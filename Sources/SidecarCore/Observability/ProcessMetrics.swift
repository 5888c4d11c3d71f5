import FoundationEssentials
import Glibc

/// The standard `process_*` families, named and defined as the Prometheus client libraries
/// export them, read from /proc at scrape time (Linux only; elsewhere none are exported).
struct ProcessMetrics: Equatable {
    var cpuSeconds: Double
    var residentBytes: Double
    var virtualBytes: Double
    var startTimeSeconds: Double
    var openFDs: Double
    var maxFDs: Double
    var threads: Double

    /// The fields of /proc/PID/stat this needs. Fields are counted after the command name,
    /// which is in parentheses and may itself hold spaces and parentheses: split after the
    /// last ")".
    struct Stat: Equatable {
        var userTicks: Double
        var systemTicks: Double
        var threads: Double
        var startTicksSinceBoot: Double
        var virtualBytes: Double
        var residentPages: Double
    }

    static func parseStat(_ text: String) -> Stat? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // fields[0] is field 3 (state) of proc(5).
        func field(_ number: Int) -> Double? {
            let index = number - 3
            return index < fields.count ? Double(fields[index]) : nil
        }
        guard let user = field(14), let system = field(15), let threads = field(20), let start = field(22),
              let virtual = field(23), let resident = field(24) else { return nil }
        return Stat(userTicks: user, systemTicks: system, threads: threads, startTicksSinceBoot: start,
                    virtualBytes: virtual, residentPages: resident)
    }

    /// `btime` from /proc/stat: the boot time in seconds since the epoch.
    static func parseBootTime(_ text: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst("btime ".count).trimmingWhitespace())
        }
        return nil
    }

    static func from(stat: Stat, bootTime: Double, ticksPerSecond: Double, pageSize: Double,
                     openFDs: Double, maxFDs: Double) -> ProcessMetrics {
        ProcessMetrics(cpuSeconds: (stat.userTicks + stat.systemTicks) / ticksPerSecond,
                       residentBytes: stat.residentPages * pageSize, virtualBytes: stat.virtualBytes,
                       startTimeSeconds: bootTime + stat.startTicksSinceBoot / ticksPerSecond,
                       openFDs: openFDs, maxFDs: maxFDs, threads: stat.threads)
    }

    /// Read once: the boot time does not change while we run.
    private static let bootTime = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)).flatMap(parseBootTime)

    static func current() -> ProcessMetrics? {
        guard let statText = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let stat = parseStat(statText),
              let bootTime,
              let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return nil }
        var limit = rlimit()
        let maxFDs = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Double(limit.rlim_cur) : 0
        // The directory listing itself holds one descriptor while it runs.
        return from(stat: stat, bootTime: bootTime, ticksPerSecond: Double(sysconf(Int32(_SC_CLK_TCK))),
                    pageSize: Double(sysconf(Int32(_SC_PAGESIZE))), openFDs: Double(max(descriptors.count - 1, 0)), maxFDs: maxFDs)
    }

    var exposition: String {
        let families: [(String, String, String, Double)] = [
            ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpuSeconds),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", residentBytes),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virtualBytes),
            ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", startTimeSeconds),
            ("process_open_fds", "gauge", "Number of open file descriptors.", openFDs),
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.", maxFDs),
            ("process_threads", "gauge", "Number of OS threads in the process.", threads),
        ]
        var text = ""
        for (name, type, help, value) in families {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(Self.format(value))\n"
        }
        return text
    }

    /// Integers without a fraction, the rest in full precision.
    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : "\(value)"
    }
}
