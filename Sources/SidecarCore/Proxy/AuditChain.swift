import SidecarTLS

/// The audit log's hash chain. Every line ends with `"prev_hash":"<hex>"}`: the sha256 of the
/// line before it, byte for byte without its newline. Changing, removing, inserting or
/// reordering any line breaks the link to the line after it, across files too: the first line
/// the sidecar writes after a reopen (logrotate) or a restart names the last line it wrote
/// before. What a chain alone cannot show is a cut at its end, or a rewrite of everything from
/// some line on; the sidecar logs the chain head to its own log (the journal) when it opens
/// and reopens the file, which is the anchor to compare with (`audit verify --head`).
public enum AuditChain {
    /// What the first line of a chain names when nothing came before it (a new, empty log).
    public static let genesis = String(repeating: "0", count: 64)
    static let fieldStart = Array(",\"prev_hash\":\"".utf8)
    static let fieldEnd = Array("\"}".utf8)
    static let restartMarker = Array(",\"event\":\"\(AuditEvent.Kind.auditLogOpened.rawValue)\"".utf8)

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
    /// before the batch, and afterwards the hash of the batch's last line.
    static func seal(_ batch: [UInt8], head: inout String, into out: inout [UInt8]) {
        out.reserveCapacity(out.count + batch.count + 96 * 8)
        var start = batch.startIndex
        while let newline = batch[start...].firstIndex(of: UInt8(ascii: "\n")) {
            var end = newline
            // Everything a sink formats ends in "}"; anything else is passed through unchained
            // (and `verify` will say so) rather than dropped.
            if end > start, batch[end - 1] == UInt8(ascii: "}") { end -= 1 }
            let lineStart = out.count
            out.append(contentsOf: batch[start..<end])
            if end < newline {
                out.append(contentsOf: fieldStart)
                out.append(contentsOf: head.utf8)
                out.append(contentsOf: fieldEnd)
            }
            head = hash(out[lineStart...])
            out.append(UInt8(ascii: "\n"))
            start = newline + 1
        }
    }

    /// Where a line is: a file name and a 1-based line number.
    public struct Location: Sendable, Equatable, CustomStringConvertible {
        public var file: String
        public var line: Int
        public var description: String { "\(file):\(line)" }
    }

    public enum Verdict: Sendable, Equatable {
        /// Every link holds. `head` is the hash of the last line (compare with the anchor the
        /// sidecar logged); `restarts` are lines that start a new chain (a sidecar that
        /// started on an empty log): lines before them are not linked to lines after.
        case intact(lines: Int, head: String, startsWith: String, restarts: [Location])
        case broken(Location, reason: String)
    }

    /// Checks files given oldest first (`audit.log.2 audit.log.1 audit.log`). `start`: the
    /// hash the first line must name (the anchor of an earlier, verified file); `head`: the
    /// hash the last line must have (an anchor from the sidecar's log).
    public static func verify(files: [(name: String, bytes: [UInt8])], start: String? = nil, head: String? = nil) -> Verdict {
        var previous: String?
        var first: String?
        var lines = 0
        var restarts: [Location] = []
        for (name, bytes) in files {
            var index = bytes.startIndex
            var number = 0
            while index < bytes.endIndex {
                number += 1
                let newline = bytes[index...].firstIndex(of: UInt8(ascii: "\n"))
                let line = bytes[index..<(newline ?? bytes.endIndex)]
                let location = Location(file: name, line: number)
                guard newline != nil else { return .broken(location, reason: "the last line is incomplete (no newline)") }
                guard let claimed = claimedHash(line) else {
                    return .broken(location, reason: "the line does not end with a prev_hash field")
                }
                if let previous, claimed != previous {
                    if claimed == genesis && isRestart(line) {
                        restarts.append(location)
                    } else {
                        return .broken(location, reason: "prev_hash does not match the line before: a line was changed, removed or inserted here")
                    }
                } else if previous == nil, let start, claimed != start {
                    return .broken(location, reason: "the first line names \(claimed), not the expected start \(start)")
                }
                if first == nil { first = claimed }
                previous = hash(line)
                lines += 1
                index = newline! + 1
            }
        }
        guard let previous, let first else {
            return .broken(Location(file: files.last?.name ?? "-", line: 0), reason: "no lines")
        }
        if let head, head != previous {
            return .broken(Location(file: files.last!.name, line: -1),
                           reason: "the last line's hash is \(previous), not the expected head \(head): lines were cut from the end or rewritten")
        }
        return .intact(lines: lines, head: previous, startsWith: first, restarts: restarts)
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

    /// A line that may start a new chain: an `audit_log_opened` line (the event field is the
    /// third, at a fixed place, so a value elsewhere in the line cannot pass for it).
    static func isRestart(_ line: ArraySlice<UInt8>) -> Bool {
        // {"ts":"2026-12-05T10:00:00.000Z","schema_version":N ...
        guard let comma = line.dropFirst(40).firstIndex(of: UInt8(ascii: ",")) else { return false }
        return line[comma...].starts(with: restartMarker)
    }
}
