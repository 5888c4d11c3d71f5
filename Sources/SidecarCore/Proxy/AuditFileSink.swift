import FoundationEssentials
import Glibc
import Logging
import SidecarTLS
import SidecarModel

/// JSON lines to a file or to stdout, hash-chained (`AuditChain`). Lines are formatted by the
/// caller and sealed and written by a thread of their own: an event loop never waits on the
/// disk, and a burst of short connections costs one write(2) per batch rather than one per
/// line. A disk slower than the traffic holds callers back once 16 MiB are waiting, rather
/// than dropping audit lines.
/// `@unchecked Sendable`: its mutable state is guarded by `condition`.
package final class JSONLinesAuditSink: AuditSink, @unchecked Sendable {
    /// The file the sink appends to (nil: a descriptor it was given, such as stdout).
    private let path: String?
    private let logger: Logger?
    /// Told how many lines a failed write lost (the metric).
    private let linesLost: (@Sendable (Int) -> Void)?
    private let condition = AuditCondition()
    // Guarded by `condition`.
    private var fd: Int32
    private var pending: [UInt8] = []
    private var queuedBytes = 0
    private var writtenBytes = 0
    private var failureReported = false
    private var reopenRequests = 0
    private var reopensDone = 0
    /// The hash of the last line written (the chain's head); only the writer advances it.
    private var head: String
    static let maxPending = 16 << 20
    static let batchDelayMicroseconds: UInt32 = 2000

    /// Writes to stdout; the chain starts afresh.
    package convenience init(fd: Int32 = STDOUT_FILENO, logger: Logger? = nil,
                            linesLost: (@Sendable (Int) -> Void)? = nil) throws {
        try self.init(fd: fd, path: nil, head: AuditChain.genesis, logger: logger, linesLost: linesLost)
    }

    private init(fd: Int32, path: String?, head: String, logger: Logger?, linesLost: (@Sendable (Int) -> Void)?) throws {
        self.fd = fd
        self.path = path
        self.head = head
        self.logger = logger
        self.linesLost = linesLost
        announce("audit log opened", chainHead: head)
        record(Self.openedLine(reason: "started"))
        try startDetachedThread(name: "audit-writer") { [self] in writeLoop() }
    }

    /// Appends to `path` (created 0640), continuing the chain from the file's last line.
    /// O_APPEND: every write lands at the end of the file as it is now, so logrotate's
    /// `copytruncate` leaves no hole of zeros, and `reopen()` (SIGHUP) follows its `create`
    /// mode to the new file. A non-empty file whose last line cannot be read is refused: the
    /// chain would silently start over.
    package static func file(at path: String, logger: Logger? = nil,
                            linesLost: (@Sendable (Int) -> Void)? = nil) throws -> JSONLinesAuditSink {
        let fd = try openForAppend(path)
        var head = AuditChain.genesis
        do {
            if let last = try lastLine(of: path) {
                head = last.hash
                // A line cut short (a crash mid-write) stays as it is, on a line of its own:
                // `audit verify` names it.
                if !last.complete { _ = [UInt8(ascii: "\n")].withUnsafeBytes { DescriptorWriter.writeAll(fd, $0, waitWhenFull: true) } }
            }
        } catch {
            close(fd)
            let reason = (error as? ConfigError)?.message ?? "\(error)" // the path is named once
            throw ConfigError(source: path, path: "", message: "cannot read the audit log's last line to continue its hash chain: \(reason)")
        }
        do {
            return try JSONLinesAuditSink(fd: fd, path: path, head: head, logger: logger, linesLost: linesLost)
        } catch {
            close(fd)
            throw error
        }
    }

    static func openForAppend(_ path: String) throws -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw ConfigError(source: path, path: "", message: "cannot open audit log file for appending: \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// The hash of the file's last line, and whether it ended with a newline; nil for an
    /// empty file (or one that does not exist). Reads backwards in chunks until the line
    /// starts, however long it is, and hashes it as it goes forward.
    static func lastLine(of path: String) throws -> (hash: String, complete: Bool)? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw ConfigError(source: path, path: "", message: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        let size = Int(lseek(fd, 0, SEEK_END))
        guard size > 0 else { return nil }
        let chunk = 1 << 20
        func read(_ offset: Int, _ count: Int) throws -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            guard got == count else { throw ConfigError(source: path, path: "", message: "short read") }
            return bytes
        }
        let complete = try read(size - 1, 1) == [UInt8(ascii: "\n")]
        let end = complete ? size - 1 : size // the line's bytes are [start, end)
        var start = 0
        var offset = end
        while offset > 0 {
            let count = min(chunk, offset)
            let bytes = try read(offset - count, count)
            if let newline = bytes.lastIndex(of: UInt8(ascii: "\n")) {
                start = offset - count + newline + 1
                break
            }
            offset -= count
        }
        let digest = SHA256Digest()
        var position = start
        while position < end {
            let count = min(chunk, end - position)
            digest.update(try read(position, count))
            position += count
        }
        return (digest.finalizeHex(), complete)
    }

    private static func openedLine(reason: String) -> AuditEvent {
        AuditEvent(kind: .auditLogOpened, listener: "", reason: reason)
    }

    /// The chain head goes to the sidecar's own log (the journal): an anchor kept apart from
    /// the audit file, to check it against (`audit verify --head`).
    private func announce(_ message: Logger.Message, chainHead: String) {
        logger?.notice(message, metadata: ["audit_log": "\(path ?? "stdout")", "chain_head": "\(chainHead)"])
    }

    /// Reopens the file by its path (after logrotate moved it away); returns once lines
    /// recorded before the call are in the old file and later ones go to the new one, whose
    /// first line names the old file's last. A path that cannot be opened keeps the old
    /// descriptor (and says so on stderr).
    package func reopen() {
        guard path != nil else { return }
        condition.lock()
        reopenRequests += 1
        let target = reopenRequests
        condition.broadcast()
        while reopensDone < target { condition.wait() }
        condition.unlock()
    }

    package func record(_ event: AuditEvent) {
        let line = event.fileLine
        condition.lock()
        while pending.count >= Self.maxPending { condition.wait() }
        let wasEmpty = pending.isEmpty
        pending.append(contentsOf: line)
        queuedBytes += line.count
        // Only the first line of a batch wakes the writer; the rest ride along.
        if wasEmpty { condition.broadcast() }
        condition.unlock()
    }

    package func flush() {
        condition.lock()
        let target = queuedBytes
        while writtenBytes < target { condition.wait() }
        condition.unlock()
    }

    /// Flushes, and logs the chain head: the anchor for the file as it is left (at exit).
    package func finish() {
        flush()
        condition.lock()
        let head = self.head
        condition.unlock()
        announce("audit log closed", chainHead: head)
    }

    /// How often the chain head goes to the sidecar's log while lines are being written.
    static let anchorInterval: TimeInterval = 300

    /// The sink lives as long as the process (it is never deinitialized while this runs).
    private func writeLoop() {
        var batch: [UInt8] = []
        var sealed: [UInt8] = []
        /// Lines a failed write lost since the last write that worked, and why.
        var lostSinceLastWrite = 0
        var lossReason = ""
        var lastAnchor = Date()
        while true {
            condition.lock()
            while pending.isEmpty && reopensDone == reopenRequests { condition.wait() }
            let reopening = reopensDone < reopenRequests
            condition.unlock()
            // Let a burst gather: at most ~500 wakeups a second however busy the sidecar is,
            // and an audit line reaches the file within a few milliseconds.
            if !reopening { usleep(Self.batchDelayMicroseconds) }
            condition.lock()
            swap(&batch, &pending)
            let target = reopenRequests
            var fd = self.fd
            var head = self.head
            condition.broadcast() // Callers held back by a full queue may go on.
            condition.unlock()
            var lost = 0
            var failure: String?
            func write(_ lines: [UInt8]) {
                sealed.removeAll(keepingCapacity: true)
                if lostSinceLastWrite > 0 {
                    // A newline ends whatever part of a failed write reached the file; then a
                    // line saying how many were lost, chained to the last of them, so `audit
                    // verify` names the gap instead of a bare mismatch.
                    sealed.append(UInt8(ascii: "\n"))
                    let marker = AuditEvent(kind: .auditLinesLost, listener: "",
                                            reason: "\(lostSinceLastWrite) lines could not be written (\(lossReason))")
                    AuditChain.seal(marker.fileLine, head: &head, into: &sealed)
                }
                let lineCount = AuditChain.seal(lines, head: &head, into: &sealed)
                if let error = writeAll(sealed, to: fd) {
                    failure = failure ?? error
                    lost += lineCount
                    lostSinceLastWrite += lineCount
                    lossReason = error
                } else {
                    lostSinceLastWrite = 0
                }
            }
            write(batch)
            if target > reopensDone, reopenFile() {
                // The new file's first line: linked to the old file's last.
                announce("audit log reopened", chainHead: head)
                condition.lock()
                fd = self.fd
                condition.unlock()
                write(Self.openedLine(reason: "reopened").fileLine)
            }
            // Counted before `flush()` can return for these lines.
            if lost > 0 { linesLost?(lost) }
            condition.lock()
            self.head = head
            if target > reopensDone { reopensDone = target }
            writtenBytes += batch.count
            let report = failure != nil && !failureReported
            if failure != nil { failureReported = true }
            condition.broadcast()
            condition.unlock()
            if report, let failure {
                // Nowhere else to say it: the audit log itself is what failed.
                StandardError.write("backup-sidecar: audit log write failed (\(failure)); audit lines are being lost\n")
            }
            // An anchor for the file being written, too (not only for files left behind).
            if Date().timeIntervalSince(lastAnchor) >= Self.anchorInterval {
                lastAnchor = Date()
                announce("audit log chain head", chainHead: head)
            }
            batch.removeAll(keepingCapacity: batch.capacity <= 1 << 20)
            sealed.removeAll(keepingCapacity: sealed.capacity <= 1 << 20)
        }
    }

    /// On the writer thread, after the lines recorded before the request were written. False
    /// when the path could not be opened (the old descriptor stays).
    private func reopenFile() -> Bool {
        guard let path else { return false }
        guard let fresh = try? Self.openForAppend(path) else {
            StandardError.write("backup-sidecar: audit log \(path) could not be reopened; still writing to the old file\n")
            return false
        }
        condition.lock()
        close(fd)
        fd = fresh
        failureReported = false
        condition.unlock()
        return true
    }

    /// A full stdout pipe is waited out: audit lines are held back, never dropped.
    private func writeAll(_ bytes: [UInt8], to fd: Int32) -> String? {
        guard !bytes.isEmpty else { return nil }
        let failure = bytes.withUnsafeBytes { DescriptorWriter.writeAll(fd, $0, waitWhenFull: true) }
        return failure.map { String(cString: strerror($0)) }
    }
}
