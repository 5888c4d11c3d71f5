/// Receive-window autotuning for the streams of one mux connection: each stream starts with a
/// small window and grows it only while the window is what holds it back.
///
/// A fixed window is wrong both ways. Big enough for an off-site storage node (bytes in flight
/// = rate × round trip: 100 MB/s at 20 ms is 2 MB) it makes every stream behind a slow local
/// reader buffer that much; small, it caps every distant stream at window / round trip.
///
/// How it decides (the bandwidth-delay estimate gRPC uses): now and then, while data arrives,
/// a PING goes out and each stream counts what arrives until its ACK, one round trip later. A
/// stream that received at least half its window in that round trip may be held back by it;
/// its window doubles, but only if the stream also got faster than at its last growth. A
/// stream held back by its reader fills its window without getting faster, so it stays where
/// it is. Samples that grow nothing make sampling rarer, down to once a second.
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
    }

    /// One receiving stream: its window now, the bandwidth that last earned it a growth, and
    /// what arrived since the outstanding PING went out.
    struct Stream: Equatable {
        var window: Int32
        var bandwidthAtLastGrowth: Double = 0
        var sampled = 0
    }

    /// A window growth to apply: tell the peer the stream may have `window` bytes in flight.
    struct Growth: Equatable {
        var streamID: Int32
        var window: Int32
    }

    let limits: Limits
    private(set) var streams: [Int32: Stream] = [:]
    /// The sampling PING on its way: its tag (our 8 opaque bytes) and when it went out.
    private(set) var outstanding: (tag: UInt64, sentAt: Int64)?
    private var lastSampleAt: Int64?
    private(set) var interval: Int64
    private var nextTag: UInt64 = 1

    init(limits: Limits) {
        precondition(limits.initialWindow > 0 && limits.initialWindow <= limits.maximumWindow)
        self.limits = limits
        self.interval = limits.minimumInterval
    }

    /// `count` bytes of DATA arrived on `streamID` at `now`. Returns the tag of a PING to send
    /// now when a sample should start.
    mutating func received(_ count: Int, on streamID: Int32, now: Int64) -> UInt64? {
        var stream = streams[streamID] ?? Stream(window: limits.initialWindow)
        defer { streams[streamID] = stream }
        if outstanding != nil {
            stream.sampled += count
            return nil
        }
        // What arrived before the PING went out is not part of its round trip.
        guard stream.window < limits.maximumWindow else { return nil }
        if let lastSampleAt, now - lastSampleAt < interval { return nil }
        let tag = nextTag
        nextTag &+= 1
        if nextTag == 0 { nextTag = 1 } // 0 is what our keepalive PINGs carry
        outstanding = (tag, now)
        lastSampleAt = now
        return tag
    }

    /// A PING ACK carrying `tag` arrived at `now`. Returns the streams whose windows grow.
    mutating func acknowledged(tag: UInt64, now: Int64) -> [Growth] {
        guard let sent = outstanding, sent.tag == tag else { return [] }
        outstanding = nil
        let roundTrip = max(now - sent.sentAt, 1)
        var grown: [Growth] = []
        for (id, var stream) in streams where stream.sampled > 0 {
            if let window = Self.grownWindow(&stream, roundTrip: roundTrip, maximum: limits.maximumWindow) {
                grown.append(Growth(streamID: id, window: window))
            }
            stream.sampled = 0
            streams[id] = stream
        }
        interval = grown.isEmpty ? min(interval * 2, limits.maximumInterval) : limits.minimumInterval
        return grown.sorted { $0.streamID < $1.streamID }
    }

    /// The stream is gone: it needs no window any more.
    mutating func closed(_ streamID: Int32) {
        streams[streamID] = nil
    }

    /// The window a stream grows to after one sample, or nil if it stays.
    static func grownWindow(_ stream: inout Stream, roundTrip: Int64, maximum: Int32) -> Int32? {
        guard stream.window < maximum, roundTrip > 0 else { return nil }
        let sample = stream.sampled
        // Less than half the window in a round trip: something other than the window limits it.
        guard sample * 2 >= Int(stream.window) else { return nil }
        // Bytes per nanosecond; it must beat the last growth's by a quarter, so neither noise
        // nor a stream that fills its window behind a slow reader keeps on growing.
        let bandwidth = Double(sample) / Double(roundTrip)
        guard bandwidth > stream.bandwidthAtLastGrowth * 1.25 else { return nil }
        let grown = Int32(min(Int(stream.window) * 2, Int(maximum)))
        stream.bandwidthAtLastGrowth = bandwidth
        stream.window = grown
        return grown
    }
}
