/// Receive-window autotuning for the streams of one mux connection: each stream starts with a
/// small window and grows it only while the window is what holds it back.
///
/// A fixed window is wrong both ways. Big enough for an off-site storage node (bytes in flight
/// = rate × round trip: 100 MB/s at 20 ms is 2 MB) it makes every stream behind a slow local
/// reader buffer that much; small, it caps every distant stream at window / round trip.
///
/// How it decides: now and then, while data arrives, a PING goes out and each stream counts
/// what arrives from the moment it left until its ACK, one round trip later. A stream's window
/// doubles after three samples in a row in which both hold (one would do on the path, but a
/// reader's first few MiB vanish into its socket buffers and look like a reader keeping up):
/// - its reader kept up: never more than a quarter of the window waited for it (a reader
///   that falls behind is what limits the stream, and a larger window would only buffer more
///   for it; a hiccup of a busy host is not that);
/// - the window is at most four times the bytes in flight that the path holds at that rate
///   over its shortest round trip seen (bandwidth × minimum RTT, as BBR estimates it). Four:
///   a stream the window holds back gets half of it per round trip (credit comes back in
///   halves), and a busy host's rate wobbles. A round trip longer than the shortest is
///   queueing, mostly behind the stream's own data: on loopback or a busy host, a sample
///   taken through that queue sees "half the window per round trip" whatever the window,
///   and growing would only lengthen the queue.
/// A grown window whose reader sat on half of it goes back to the initial one (the peer keeps
/// the credit it has; none is given until the stream is under the smaller window). Samples
/// that change nothing make sampling rarer, down to once a second; one whose ACK has not come
/// in four seconds is given up.
///
/// A peer cannot answer for a PING it has not seen: tags are random, and an ACK counts only
/// once its PING has been flushed.
///
/// Pure: no I/O and no clock of its own; times are monotonic nanoseconds from the caller.
struct ReceiveWindowTuning {
    struct Limits {
        /// Every stream starts here (the SETTINGS_INITIAL_WINDOW_SIZE we announce).
        var initialWindow: Int32
        /// No stream grows past this.
        var maximumWindow: Int32
        /// Shortest gap between samples, and the longest once samples stop growing anything.
        var minimumInterval: Int64 = 10_000_000
        var maximumInterval: Int64 = 1_000_000_000
        /// Samples in a row that must call for a larger window before it doubles.
        var samplesPerDoubling = 3
    }

    /// One receiving stream: its window now, what arrived since the outstanding PING went out,
    /// the most that waited for its reader since, and how many samples in a row called for more.
    struct Stream: Equatable {
        var window: Int32
        var sampled = 0
        var mostWaiting = 0
        var calledForMore = 0
    }

    /// The sampling PING: queued (not flushed yet, nothing counts) or on its way since `sentAt`.
    enum Sample: Equatable {
        case idle
        case queued(tag: UInt64)
        case counting(tag: UInt64, sentAt: Int64)
    }

    /// A window to apply: the peer may have `window` bytes of the stream in flight.
    struct WindowChange: Equatable {
        var streamID: Int32
        var window: Int32
    }

    let limits: Limits
    private(set) var streams: [Int32: Stream] = [:]
    private(set) var sample = Sample.idle
    /// The shortest PING round trip of the connection so far: the path without queues.
    private(set) var minimumRoundTrip: Int64?
    private var lastSampleAt: Int64?
    private(set) var interval: Int64
    /// PINGs for the round trip alone: the connection's first, and one after its ACK (the
    /// first may have waited for the peer to finish setting up).
    private var probesLeft = 2

    init(limits: Limits) {
        precondition(limits.initialWindow > 0 && limits.initialWindow <= limits.maximumWindow)
        self.limits = limits
        self.interval = limits.minimumInterval
    }

    /// `count` bytes of DATA arrived on `streamID` at `now`. Returns the tag of a PING to queue
    /// when a sample should start; call `flushed(now:)` when it goes out.
    mutating func received(_ count: Int, on streamID: Int32, now: Int64) -> UInt64? {
        if case .counting(_, let sentAt) = sample, now - sentAt > 4 * limits.maximumInterval { abandonSample() }
        var stream = streams[streamID] ?? Stream(window: limits.initialWindow)
        defer { streams[streamID] = stream }
        switch sample {
        case .counting:
            stream.sampled += count
            return nil
        case .queued:
            return nil // arrived before the PING left: not part of its round trip
        case .idle:
            guard stream.window < limits.maximumWindow else { return nil }
            if let lastSampleAt, now - lastSampleAt < interval { return nil }
            let tag = UInt64.random(in: 1...UInt64.max) // 0 is what our keepalive PINGs carry
            sample = .queued(tag: tag)
            lastSampleAt = now
            return tag
        }
    }

    /// A sample for the round trip alone, while probes are left (the connection's first frames).
    mutating func probe() -> UInt64? {
        guard case .idle = sample, probesLeft > 0 else { return nil }
        probesLeft -= 1
        let tag = UInt64.random(in: 1...UInt64.max)
        sample = .queued(tag: tag)
        return tag
    }

    /// The connection's output was flushed at `now`: a queued PING is on its way.
    mutating func flushed(now: Int64) {
        if case .queued(let tag) = sample { sample = .counting(tag: tag, sentAt: now) }
    }

    /// `waiting` bytes of `streamID` are still waiting for its reader after a delivery.
    mutating func readerFellBehind(on streamID: Int32, waiting: Int) {
        guard case .counting = sample, var stream = streams[streamID] else { return }
        stream.mostWaiting = max(stream.mostWaiting, waiting)
        streams[streamID] = stream
    }

    /// A PING ACK carrying `tag` arrived at `now`. Returns the streams whose windows change.
    mutating func acknowledged(tag: UInt64, now: Int64) -> [WindowChange] {
        guard case .counting(tag, let sentAt) = sample else { return [] }
        sample = .idle
        let roundTrip = max(now - sentAt, 1)
        let shortest = min(minimumRoundTrip ?? roundTrip, roundTrip)
        minimumRoundTrip = shortest
        var changes: [WindowChange] = [], progressed = false
        for (id, var stream) in streams where stream.sampled > 0 || stream.mostWaiting > 0 {
            if Self.callsForMore(stream, roundTrip: roundTrip, minimumRoundTrip: shortest, maximum: limits.maximumWindow) {
                progressed = true
                stream.calledForMore += 1
                if stream.calledForMore >= limits.samplesPerDoubling {
                    stream.calledForMore = 0
                    stream.window = Int32(min(Int(stream.window) * 2, Int(limits.maximumWindow)))
                    changes.append(WindowChange(streamID: id, window: stream.window))
                }
            } else {
                stream.calledForMore = 0
                if stream.mostWaiting * 2 >= Int(stream.window) && stream.window > limits.initialWindow {
                    stream.window = limits.initialWindow
                    changes.append(WindowChange(streamID: id, window: stream.window))
                }
            }
            stream.sampled = 0
            stream.mostWaiting = 0
            streams[id] = stream
        }
        if progressed {
            interval = limits.minimumInterval
        } else if lastSampleAt != nil {
            interval = min(interval * 2, limits.maximumInterval)
        }
        return changes.sorted { $0.streamID < $1.streamID }
    }

    /// The ACK is not coming (a peer that never answers): counting stops, nothing changes.
    private mutating func abandonSample() {
        sample = .idle
        for id in streams.keys {
            streams[id]?.sampled = 0
            streams[id]?.mostWaiting = 0
        }
    }

    /// The stream is gone: it needs no window any more.
    mutating func closed(_ streamID: Int32) {
        streams[streamID] = nil
    }

    /// Whether one sample calls for a larger window.
    static func callsForMore(_ stream: Stream, roundTrip: Int64, minimumRoundTrip: Int64, maximum: Int32) -> Bool {
        let sample = stream.sampled, window = Int(stream.window)
        guard window < Int(maximum), roundTrip > 0, minimumRoundTrip > 0 else { return false }
        // Its reader did not keep up: the reader is what limits it.
        guard stream.mostWaiting * 4 <= window else { return false }
        // The window already holds four times what the path carries at this rate in its
        // shortest round trip: something other than the window limits the stream.
        let inFlightAtShortest = Double(sample) * Double(min(minimumRoundTrip, roundTrip)) / Double(roundTrip)
        return 4 * inFlightAtShortest >= Double(window)
    }
}
