import Glibc
import SidecarTLS

/// The audit log's hash chain. Every line ends with `"prev_hash":"<hex>"}`: the sha256 of the
/// line before it, byte for byte without its newline. Changing, removing, inserting or
/// reordering any line breaks the link to the line after it, across files too: the first line
/// the sidecar writes after a reopen (logrotate) or a restart names the last line it wrote
/// before. What a chain alone cannot show is a cut at its end, or a rewrite of everything from
/// some line on; the sidecar logs the chain head to its own log (the journal) when it opens
/// and reopens the file, which is the anchor to compare with (`audit verify --head`).
package enum AuditChain {
    /// What the first line of a chain names when nothing came before it (a new, empty log).
    package static let genesis = String(repeating: "0", count: 64)
    static let fieldStart = Array(",\"prev_hash\":\"".utf8)
    static let fieldEnd = Array("\"}".utf8)

    /// Lowercase hex sha256 of one line (without its newline).
    static func hash(_ line: UnsafeRawBufferPointer) -> String {
        let digest = SHA256Digest()
        digest.update(line)
        return digest.finalizeHex()
    }

    static func hash(_ line: ArraySlice<UInt8>) -> String {
        line.withUnsafeBytes { hash($0) }
    }

    /// Chains a batch of formatted lines (each a JSON object ending in "}\n"): each gets its
    /// `prev_hash` field before the closing brace. `head` is the hash of the line written
    /// before the batch, and afterwards the hash of the batch's last line. Returns how many
    /// lines it chained. Lines are found with memchr: a byte-at-a-time scan here and a second
    /// one to count them were 2.5 % of a storage sidecar's instructions (callgrind).
    @discardableResult
    static func seal(_ batch: [UInt8], head: inout String, into out: inout [UInt8]) -> Int {
        out.reserveCapacity(out.count + batch.count + 96 * 8)
        var lines = 0
        batch.withUnsafeBufferPointer { bytes in
            guard let base = bytes.baseAddress else { return }
            var start = 0
            while start < bytes.count,
                  let found = memchr(base + start, CInt(UInt8(ascii: "\n")), bytes.count - start) {
                let newline = start + (UnsafeRawPointer(found) - UnsafeRawPointer(base + start))
                var end = newline
                // Everything a sink formats ends in "}"; anything else is passed through unchained
                // (and `verify` will say so) rather than dropped.
                if end > start, bytes[end - 1] == UInt8(ascii: "}") { end -= 1 }
                let lineStart = out.count
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<end]))
                if end < newline {
                    out.append(contentsOf: fieldStart)
                    out.append(contentsOf: head.utf8)
                    out.append(contentsOf: fieldEnd)
                }
                head = hash(out[lineStart...])
                out.append(UInt8(ascii: "\n"))
                start = newline + 1
                lines += 1
            }
        }
        return lines
    }

    /// Where a line is: a file name and a 1-based line number (0: not a line of the files).
    package struct Location: Sendable, Equatable, CustomStringConvertible {
        package var file: String
        package var line: Int
        package var description: String { line > 0 ? "\(file):\(line)" : file }
    }

    package struct Break: Sendable, Equatable {
        package var location: Location
        package var reason: String
    }

    /// What `verify` found. The chain holds when `breaks` is empty.
    package struct Verdict: Sendable, Equatable {
        package var lines = 0
        /// The hash of the last line: compare with the sidecar's latest logged anchor.
        package var head = ""
        /// What the first line names: 64 zeros for a log that started empty, otherwise the
        /// line before it (in a file not given; `--start` checks it).
        package var startsWith = ""
        /// Lines that start a new chain (a sidecar that started on an empty log, or on stdout):
        /// the lines before them are not linked to the lines after.
        package var restarts: [Location] = []
        /// Every place the chain does not hold, in file order (verify goes on after each).
        package var breaks: [Break] = []
        package var intact: Bool { breaks.isEmpty }
    }

    /// Checks files given oldest first (`audit.log.2 audit.log.1 audit.log`) and lists every
    /// break. `start`: the hash the first line must name (the head of an earlier, verified
    /// file); `head`: the hash the last line must have; `anchors`: chain heads the sidecar
    /// logged (journal), each of which must be the hash of a line in the files, or what the
    /// first line names: an anchor that is neither shows lines cut or rewritten after it was
    /// logged. `strict`: a restart is a break too.
    package static func verify(files: [(name: String, bytes: [UInt8])], start: String? = nil, head: String? = nil,
                              anchors: [String] = [], strict: Bool = false) -> Verdict {
        var verdict = Verdict()
        var previous: String?
        var seen: Set<String> = []
        /// A line that is not chained (torn by a crash or a failed write, or empty), held back
        /// to be reported together with an `audit_lines_lost` line right after it.
        var unchained: Location?
        func flushUnchained() {
            if let location = unchained {
                verdict.breaks.append(Break(location: location, reason: "the line does not end with a prev_hash field (torn, empty or not written by the sidecar)"))
            }
            unchained = nil
        }
        for (name, bytes) in files {
            var index = bytes.startIndex
            var number = 0
            while index < bytes.endIndex {
                number += 1
                let newline = bytes[index...].firstIndex(of: UInt8(ascii: "\n"))
                let line = bytes[index..<(newline ?? bytes.endIndex)]
                let location = Location(file: name, line: number)
                index = (newline ?? bytes.endIndex - 1) + 1
                let lineHash = hash(line)
                defer {
                    previous = lineHash
                    seen.insert(lineHash)
                }
                guard newline != nil else {
                    flushUnchained()
                    verdict.breaks.append(Break(location: location, reason: "the last line is incomplete (no newline)"))
                    continue
                }
                guard let claimed = claimedHash(line) else {
                    flushUnchained()
                    unchained = location
                    continue
                }
                verdict.lines += 1
                if verdict.lines == 1 { verdict.startsWith = claimed }
                if isLinesLost(line) && (unchained != nil || claimed != previous) {
                    let count = lostCount(line).map { "\($0) audit lines" } ?? "audit lines"
                    verdict.breaks.append(Break(location: unchained ?? location,
                                                reason: "\(count) lost here: the sidecar could not write them (recorded at \(location))"))
                    unchained = nil
                    continue
                }
                flushUnchained()
                if let previous, claimed != previous {
                    if claimed == genesis && isRestart(line) {
                        verdict.restarts.append(location)
                        if strict { verdict.breaks.append(Break(location: location, reason: "a new chain starts here (--strict)")) }
                    } else {
                        verdict.breaks.append(Break(location: location, reason: "prev_hash does not match the line before: a line was changed, removed or inserted here"))
                    }
                } else if previous == nil, let start, claimed != start {
                    verdict.breaks.append(Break(location: location, reason: "the first line names \(claimed), not the expected start \(start)"))
                }
            }
        }
        flushUnchained()
        verdict.head = previous ?? ""
        guard previous != nil else {
            verdict.breaks.append(Break(location: Location(file: files.last?.name ?? "-", line: 0), reason: "no lines"))
            return verdict
        }
        if let head, head != verdict.head {
            verdict.breaks.append(Break(location: Location(file: "--head", line: 0),
                                        reason: "the last line's hash is \(verdict.head), not \(head): lines were cut from the end or rewritten"))
        }
        for anchor in anchors where anchor != verdict.startsWith && !seen.contains(anchor) {
            verdict.breaks.append(Break(location: Location(file: "--anchor", line: 0),
                                        reason: "\(anchor) is the hash of no line: lines logged before it was were cut or rewritten"))
        }
        return verdict
    }

    /// The hash a line names, if it ends with the field exactly as the sidecar writes it.
    static func claimedHash(_ line: ArraySlice<UInt8>) -> String? {
        let tail = fieldStart.count + 64 + fieldEnd.count
        guard line.count > tail else { return nil }
        let fieldAt = line.endIndex - tail
        guard line[fieldAt..<(fieldAt + fieldStart.count)].elementsEqual(fieldStart),
              line[(line.endIndex - fieldEnd.count)...].elementsEqual(fieldEnd) else { return nil }
        let hex = line[(fieldAt + fieldStart.count)..<(line.endIndex - fieldEnd.count)]
        guard hex.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else { return nil }
        return String(decoding: hex, as: UTF8.self)
    }

    /// A line that may start a new chain: exactly the `audit_log_opened` line a sidecar writes
    /// when it starts on an empty log or on stdout, and nothing else.
    static func isRestart(_ line: ArraySlice<UInt8>) -> Bool {
        String(decoding: line, as: UTF8.self).wholeMatch(of: restartLine) != nil
    }

    /// The line a sidecar writes once writing works again after lines were lost.
    static func isLinesLost(_ line: ArraySlice<UInt8>) -> Bool {
        String(decoding: line, as: UTF8.self).prefixMatch(of: linesLostPrefix) != nil
    }

    static func lostCount(_ line: ArraySlice<UInt8>) -> Int? {
        String(decoding: line, as: UTF8.self).firstMatch(of: #/"reason":"([0-9]+) lines could not be written/#).flatMap { Int($0.1) }
    }

    nonisolated(unsafe) static let restartLine =
        #/\{"ts":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z","schema_version":[0-9]+,"event":"audit_log_opened","reason":"started","prev_hash":"0{64}"\}/#
    nonisolated(unsafe) static let linesLostPrefix =
        #/\{"ts":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z","schema_version":[0-9]+,"event":"audit_lines_lost","reason":"/#
}
