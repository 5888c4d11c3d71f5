import Testing
@testable import SidecarMux

/// The receive-window autotuning rule on its own: synthetic clocks, no sockets.
@Suite("Mux receive-window tuning")
struct ReceiveWindowTuningTests {
    static let kib = 1 << 10, mib = 1 << 20
    static let ms: Int64 = 1_000_000
    /// One sample per doubling, so each test's sample is judged alone (`threeInARow` tests the
    /// product's three).
    static let limits = ReceiveWindowTuning.Limits(initialWindow: Int32(512 * kib), maximumWindow: Int32(16 * mib),
                                                   samplesPerDoubling: 1)

    /// Starts a sample with data on `streamID` at `now` and flushes its PING at once.
    static func startSample(_ tuning: inout ReceiveWindowTuning, on streamID: Int32 = 1, now: Int64 = 0) -> UInt64? {
        guard let tag = tuning.received(1, on: streamID, now: now) else { return nil }
        tuning.flushed(now: now)
        return tag
    }

    @Test("Data starts a sample; only what arrives after its PING was flushed counts, until the ACK")
    func sampleStartsOnData() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = tuning.received(64 * Self.kib, on: 1, now: 0)
        #expect(tag != nil && tag != 0)
        #expect(tuning.sample == .queued(tag: tag!))
        #expect(tuning.streams[1] == .init(window: Int32(512 * Self.kib)))
        #expect(tuning.received(300 * Self.kib, on: 1, now: 1) == nil, "one sample at a time")
        #expect(tuning.streams[1]?.sampled == 0, "the PING has not left: nothing counts")
        #expect(tuning.acknowledged(tag: tag!, now: 2).isEmpty, "an ACK for a PING not yet sent is forged")
        tuning.flushed(now: 3)
        #expect(tuning.sample == .counting(tag: tag!, sentAt: 3))
        tuning.flushed(now: 4)
        #expect(tuning.sample == .counting(tag: tag!, sentAt: 3), "a later flush does not move the start")
        #expect(tuning.received(300 * Self.kib, on: 1, now: 5) == nil)
        #expect(tuning.received(10, on: 3, now: 5) == nil)
        #expect(tuning.streams[1]?.sampled == 300 * Self.kib)
        #expect(tuning.streams[3]?.sampled == 10)
    }

    @Test("Tags are random and never 0 (a keepalive PING's)")
    func tagsRandom() {
        var tags = Set<UInt64>()
        for _ in 0..<200 {
            var tuning = ReceiveWindowTuning(limits: Self.limits)
            tags.insert(Self.startSample(&tuning)!)
        }
        #expect(!tags.contains(0))
        #expect(tags.count == 200)
    }

    @Test("An ACK with another tag (a keepalive PING's, a stale or a guessed one) grows nothing and keeps the sample", arguments: [0, 1, 99, 1 << 40] as [UInt64])
    func foreignAckIgnored(offset: UInt64) {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = Self.startSample(&tuning)!
        _ = tuning.received(Self.mib, on: 1, now: 1)
        let other = offset == 0 ? 0 : tag &+ offset
        #expect(tuning.acknowledged(tag: other, now: 20 * Self.ms).isEmpty)
        #expect(tuning.sample == .counting(tag: tag, sentAt: 0))
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 1, window: Int32(Self.mib))])
        #expect(tuning.acknowledged(tag: tag, now: 21 * Self.ms).isEmpty, "an ACK counts once")
    }

    @Test("A stream whose reader let over a quarter of its window wait keeps its window, however much arrived; one with less waiting grows; the next sample is judged afresh")
    func readerBehindStays() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        tuning.readerFellBehind(on: 1, waiting: 400 * Self.kib)
        let tag = Self.startSample(&tuning)!
        #expect(tuning.streams[1]?.mostWaiting == 0, "before the sample: not counted")
        _ = tuning.received(Self.mib, on: 1, now: 1)
        _ = tuning.received(Self.mib, on: 3, now: 1)
        tuning.readerFellBehind(on: 1, waiting: 400 * Self.kib)
        tuning.readerFellBehind(on: 3, waiting: 100 * Self.kib)
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 3, window: Int32(Self.mib))])
        #expect(tuning.streams[1] == .init(window: Int32(512 * Self.kib)))
        let next = Self.startSample(&tuning, now: 40 * Self.ms)!
        _ = tuning.received(Self.mib, on: 1, now: 41 * Self.ms)
        #expect(tuning.acknowledged(tag: next, now: 60 * Self.ms) == [.init(streamID: 1, window: Int32(Self.mib))])
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var window: Int
        var sampled: Int
        var roundTrip: Int64
        var minimumRoundTrip: Int64
        var mostWaiting = 0
        var grown: Int?
        var why: String
        var testDescription: String { why }
    }

    static let cases: [Case] = [
        Case(window: mib, sampled: 256 * kib - 1, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, grown: nil,
             why: "under a quarter of the window in the shortest round trip: not held back by it"),
        Case(window: mib, sampled: 256 * kib, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, grown: 2 * mib,
             why: "a quarter in the shortest round trip: doubles"),
        Case(window: 8 * mib, sampled: 4080 * kib, roundTrip: 21 * ms, minimumRoundTrip: 20 * ms, grown: 16 * mib,
             why: "just under half per round trip, as a stream held back by its window gets (seen at 20 ms): doubles"),
        Case(window: mib, sampled: mib, roundTrip: 1, minimumRoundTrip: 1, grown: 2 * mib,
             why: "a whole window within a nanosecond: doubles, never more"),
        Case(window: mib, sampled: mib, roundTrip: 20 * ms, minimumRoundTrip: 2 * ms, grown: nil,
             why: "a round trip ten times the shortest is queueing: stays (loopback, a busy host)"),
        Case(window: mib, sampled: mib, roundTrip: 20 * ms, minimumRoundTrip: 5 * ms, grown: 2 * mib,
             why: "four times the shortest, a whole window: the path holds a quarter of it, four times that is the window: doubles"),
        Case(window: mib, sampled: mib, roundTrip: 20 * ms, minimumRoundTrip: 5 * ms - 1, grown: nil,
             why: "just under: stays"),
        Case(window: 12 * mib, sampled: 12 * mib, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, grown: 16 * mib,
             why: "capped at the maximum"),
        Case(window: 16 * mib, sampled: 16 * mib, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, grown: nil,
             why: "at the maximum: stays"),
        Case(window: mib, sampled: mib, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, mostWaiting: 256 * kib + 1, grown: nil,
             why: "more than a quarter of the window waited for its reader: stays, however much arrived"),
        Case(window: mib, sampled: mib, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, mostWaiting: 256 * kib, grown: 2 * mib,
             why: "a quarter waited (a busy host's hiccup): doubles"),
        Case(window: 2 * mib, sampled: 0, roundTrip: 20 * ms, minimumRoundTrip: 20 * ms, grown: nil,
             why: "nothing arrived"),
    ]

    @Test("One sample's verdict (and, with one sample per doubling, the window it leads to)", arguments: cases)
    func verdict(_ c: Case) {
        let stream = ReceiveWindowTuning.Stream(window: Int32(c.window), sampled: c.sampled, mostWaiting: c.mostWaiting)
        let calls = ReceiveWindowTuning.callsForMore(stream, roundTrip: c.roundTrip, minimumRoundTrip: c.minimumRoundTrip,
                                                     maximum: Int32(16 * Self.mib))
        #expect(calls == (c.grown != nil))
        // The same sample through a connection's tuning.
        var tuning = ReceiveWindowTuning(limits: .init(initialWindow: Int32(c.window), maximumWindow: Int32(16 * Self.mib),
                                                       samplesPerDoubling: 1))
        let probe = tuning.probe()!
        tuning.flushed(now: 0)
        _ = tuning.acknowledged(tag: probe, now: c.minimumRoundTrip)
        guard let tag = tuning.received(1, on: 1, now: Self.ms) else {
            #expect(c.grown == nil, "no sample starts only for a stream at the maximum")
            return
        }
        tuning.flushed(now: Self.ms)
        _ = tuning.received(c.sampled, on: 1, now: Self.ms + 1)
        if c.mostWaiting > 0 { tuning.readerFellBehind(on: 1, waiting: c.mostWaiting) }
        let changes = tuning.acknowledged(tag: tag, now: Self.ms + c.roundTrip)
        #expect(changes.first.map { Int($0.window) } == c.grown)
    }

    @Test("With three samples per doubling, a stream needs three in a row that call for more; one that does not starts the count over")
    func threeInARow() {
        var tuning = ReceiveWindowTuning(limits: .init(initialWindow: Int32(Self.mib), maximumWindow: Int32(16 * Self.mib)))
        #expect(tuning.limits.samplesPerDoubling == 3, "the product's default")
        var now: Int64 = 0
        func sample(waiting: Int = 0) -> [ReceiveWindowTuning.WindowChange] {
            now += 100 * Self.ms
            let tag = Self.startSample(&tuning, now: now)!
            _ = tuning.received(Self.mib, on: 1, now: now + 1)
            if waiting > 0 { tuning.readerFellBehind(on: 1, waiting: waiting) }
            return tuning.acknowledged(tag: tag, now: now + 20 * Self.ms)
        }
        #expect(sample().isEmpty && sample().isEmpty)
        #expect(sample(waiting: Self.mib / 2) .isEmpty, "the reader fell behind: the count starts over")
        #expect(sample().isEmpty && sample().isEmpty)
        #expect(sample() == [.init(streamID: 1, window: Int32(2 * Self.mib))])
        #expect(sample().isEmpty && sample().isEmpty)
        #expect(sample() == [.init(streamID: 1, window: Int32(4 * Self.mib))])
    }

    @Test("A reader whose socket buffers swallow its first MiB, then stalls: three in a row keep its window near the start")
    func absorbingReaderStaysSmall() {
        // 20 ms path at 100 MB/s; the reader takes everything for its first 6 MiB (its kernel
        // buffers), then 20 MB/s; whatever it does not take waits.
        var tuning = ReceiveWindowTuning(limits: .init(initialWindow: Int32(Self.mib), maximumWindow: Int32(16 * Self.mib)))
        let probe = tuning.probe()!
        tuning.flushed(now: 0)
        _ = tuning.acknowledged(tag: probe, now: 20 * Self.ms)
        var now: Int64 = 20 * Self.ms, taken = 0, waiting = 0, largest = Int32(Self.mib)
        for _ in 0..<300 {
            let window = Int(tuning.streams[1]?.window ?? Int32(Self.mib))
            let arriving = min(window / 2, 2 * Self.mib)        // half the window per round trip, at most the link
            let canTake = taken < 6 * Self.mib ? arriving : 400 * Self.kib   // 20 MB/s over 20 ms
            let took = min(waiting + arriving, canTake)
            waiting = waiting + arriving - took
            taken += took
            if let tag = tuning.received(1, on: 1, now: now) {
                tuning.flushed(now: now)
                _ = tuning.received(arriving, on: 1, now: now + 1)
                if waiting > 0 { tuning.readerFellBehind(on: 1, waiting: waiting) }
                _ = tuning.acknowledged(tag: tag, now: now + 20 * Self.ms)
            }
            largest = max(largest, tuning.streams[1]?.window ?? largest)
            now += 20 * Self.ms
        }
        #expect(largest <= Int32(4 * Self.mib), "grew to \(largest)")
        #expect(tuning.streams[1]!.window == Int32(Self.mib), "back at the start once the reader stalled")
    }

    @Test("The connection's first PING measures the path alone: one probe, no stream, no change to the sampling interval")
    func probeMeasuresPath() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = tuning.probe()
        #expect(tag != nil && tag != 0)
        #expect(tuning.probe() == nil, "one at a time")
        #expect(tuning.received(Self.mib, on: 1, now: 1) == nil, "data waits for the probe's sample")
        tuning.flushed(now: 2)
        #expect(tuning.acknowledged(tag: tag!, now: 2 + 300_000).isEmpty)
        #expect(tuning.minimumRoundTrip == 300_000)
        #expect(tuning.interval == Self.limits.minimumInterval)
        // A second probe: the first may have waited for the peer to set up.
        let second = tuning.probe()
        #expect(second != nil)
        tuning.flushed(now: 400_000)
        #expect(tuning.acknowledged(tag: second!, now: 400_000 + 100_000).isEmpty)
        #expect(tuning.minimumRoundTrip == 100_000, "the shorter of the two")
        #expect(tuning.probe() == nil, "two probes, then samples only")
        #expect(tuning.received(1, on: 1, now: 600_000) != nil, "the first data samples at once")
    }

    @Test("A grown window whose reader sat on half of it goes back to the initial one; less waiting, or the initial window, stays")
    func shrinksWhenBehind() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        var now: Int64 = 0
        // Grow stream 1 twice: 512 KiB -> 1 MiB -> 2 MiB.
        for _ in 0..<2 {
            let window = Int(tuning.streams[1]?.window ?? Self.limits.initialWindow)
            let tag = Self.startSample(&tuning, now: now)!
            _ = tuning.received(window, on: 1, now: now + 1)
            #expect(tuning.acknowledged(tag: tag, now: now + 20 * Self.ms).count == 1)
            now += 20 * Self.ms
        }
        #expect(tuning.streams[1]?.window == Int32(2 * Self.mib))
        // A hiccup: under half the window waited. Not grown, not shrunk.
        var tag = Self.startSample(&tuning, now: now)!
        _ = tuning.received(Self.mib, on: 1, now: now + 1)
        tuning.readerFellBehind(on: 1, waiting: Self.mib - 1)
        #expect(tuning.acknowledged(tag: tag, now: now + 20 * Self.ms).isEmpty)
        #expect(tuning.streams[1]?.window == Int32(2 * Self.mib))
        now += 1000 * Self.ms
        tag = Self.startSample(&tuning, now: now)!
        _ = tuning.received(Self.mib, on: 1, now: now + 1)
        _ = tuning.received(Self.mib, on: 3, now: now + 1)
        tuning.readerFellBehind(on: 1, waiting: 100)
        tuning.readerFellBehind(on: 1, waiting: Self.mib)
        tuning.readerFellBehind(on: 3, waiting: Self.mib)
        #expect(tuning.acknowledged(tag: tag, now: now + 20 * Self.ms) == [.init(streamID: 1, window: Int32(512 * Self.kib))])
        #expect(tuning.streams[1]?.window == Int32(512 * Self.kib))
        #expect(tuning.streams[3]?.window == Int32(512 * Self.kib))
    }

    @Test("A sample whose ACK never comes is given up after four seconds: sampling goes on, nothing it counted changes a window")
    func staleSampleAbandoned() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let lost = Self.startSample(&tuning)!
        _ = tuning.received(Self.mib, on: 1, now: 1)
        #expect(tuning.received(1, on: 1, now: 4_000_000_000) == nil, "four seconds: still waiting")
        let next = tuning.received(1, on: 1, now: 4_000_000_002)
        #expect(next != nil && next != lost)
        #expect(tuning.streams[1]?.sampled == 0)
        #expect(tuning.acknowledged(tag: lost, now: 4_000_000_003).isEmpty, "the lost one no longer counts")
    }

    @Test("Samples that grow nothing come rarer, down to one a second; a growth brings them back to every 10 ms")
    func samplingBacksOff() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        var now: Int64 = 0
        var gaps: [Int64] = []
        var last: Int64?
        // A stream trickling 1 KiB a millisecond: never half its window in a round trip.
        for _ in 0..<12_000 {
            now += Self.ms
            if let tag = tuning.received(Self.kib, on: 1, now: now) {
                tuning.flushed(now: now)
                if let last { gaps.append((now - last) / Self.ms) }
                last = now
                #expect(tuning.acknowledged(tag: tag, now: now + Self.ms).isEmpty)
            }
        }
        #expect(Array(gaps.prefix(8)) == [20, 40, 80, 160, 320, 640, 1000, 1000])
        #expect(gaps.allSatisfy { $0 <= 1000 })
        // Then a burst: the next sample grows the window, and sampling is frequent again.
        now += 1000 * Self.ms
        let tag = Self.startSample(&tuning, now: now)!
        _ = tuning.received(400 * Self.kib, on: 1, now: now + 1)
        #expect(tuning.acknowledged(tag: tag, now: now + Self.ms).count == 1)
        #expect(tuning.interval == Self.limits.minimumInterval)
        #expect(tuning.received(1, on: 1, now: now + 9 * Self.ms) == nil, "still inside 10 ms of the last sample")
        #expect(tuning.received(1, on: 1, now: now + 10 * Self.ms) != nil)
    }

    @Test("A stream at the maximum starts no sample; one below it still does")
    func maximumStopsSampling() {
        var tuning = ReceiveWindowTuning(limits: .init(initialWindow: Int32(Self.mib), maximumWindow: Int32(Self.mib)))
        #expect(tuning.received(Self.mib, on: 1, now: 0) == nil)
        var growing = ReceiveWindowTuning(limits: Self.limits)
        #expect(growing.received(1, on: 1, now: 0) != nil)
    }

    @Test("A closed stream is forgotten: its sample grows nothing")
    func closedStreamForgotten() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = Self.startSample(&tuning)!
        _ = tuning.received(Self.mib, on: 1, now: 1)
        _ = tuning.received(Self.mib, on: 3, now: 1)
        tuning.closed(1)
        #expect(tuning.streams[1] == nil)
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 3, window: Int32(Self.mib))])
    }

    @Test("Each stream is judged on its own bytes: a busy one grows, an idle neighbour stays")
    func streamsJudgedApart() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = Self.startSample(&tuning)!
        _ = tuning.received(400 * Self.kib, on: 1, now: 1)
        _ = tuning.received(4 * Self.kib, on: 5, now: 1)
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 1, window: Int32(Self.mib))])
        #expect(tuning.streams[5]?.window == Int32(512 * Self.kib))
        #expect(tuning.streams.values.allSatisfy { $0.sampled == 0 && $0.mostWaiting == 0 }, "every sample starts from nothing")
    }

    /// One stream over a path with a round trip of `baseRoundTrip` and a rate of
    /// `linkBytesPerNs`, one round trip per step. About three quarters of the window is in
    /// flight (credit comes back in halves); what the path cannot carry in its base round trip
    /// queues, and lengthens the round trip. `probe`: the connection's first PING measured
    /// the path before any data. Returns the window after each step.
    static func simulate(baseRoundTrip: Int64, linkBytesPerNs: Double, probe: Bool = true,
                         readerFallsBehind: Bool = false, seconds: Int64 = 10) -> [Int32] {
        var tuning = ReceiveWindowTuning(limits: limits)
        var now: Int64 = 0
        if probe, let tag = tuning.probe() {
            tuning.flushed(now: now)
            _ = tuning.acknowledged(tag: tag, now: now + baseRoundTrip)
            now += baseRoundTrip
        }
        var windows: [Int32] = []
        while now < seconds * 1_000_000_000 {
            let window = Int(tuning.streams[1]?.window ?? limits.initialWindow)
            let inFlight = window * 3 / 4
            let roundTrip = max(baseRoundTrip, Int64(Double(inFlight) / linkBytesPerNs))
            if let tag = tuning.received(1, on: 1, now: now) {
                tuning.flushed(now: now)
                _ = tuning.received(inFlight, on: 1, now: now + 1)
                if readerFallsBehind { tuning.readerFellBehind(on: 1, waiting: inFlight) }
                _ = tuning.acknowledged(tag: tag, now: now + roundTrip)
            }
            now += roundTrip
            windows.append(tuning.streams[1]!.window)
        }
        return windows
    }

    struct Path: CustomTestStringConvertible, Sendable {
        var roundTripMs: Double
        var megabytesPerSecond: Double
        var baseRoundTrip: Int64 { Int64(roundTripMs * 1e6) }
        var bytesPerNs: Double { megabytesPerSecond * 1e6 / 1e9 }
        /// Bytes in flight the path holds at its rate and base round trip.
        var bdp: Int { Int(Double(baseRoundTrip) * bytesPerNs) }
        var testDescription: String { "\(roundTripMs) ms at \(Int(megabytesPerSecond)) MB/s" }
    }

    @Test("Over a path whose bytes in flight exceed the window, it settles between four and eight times them (or at the maximum)",
          arguments: [Path(roundTripMs: 20, megabytesPerSecond: 100), Path(roundTripMs: 20, megabytesPerSecond: 30),
                      Path(roundTripMs: 5, megabytesPerSecond: 200), Path(roundTripMs: 1, megabytesPerSecond: 1000),
                      Path(roundTripMs: 40, megabytesPerSecond: 1000), Path(roundTripMs: 80, megabytesPerSecond: 100)])
    func pathBound(_ path: Path) {
        let windows = Self.simulate(baseRoundTrip: path.baseRoundTrip, linkBytesPerNs: path.bytesPerNs)
        let final = Int(windows.last!)
        #expect(final >= min(4 * path.bdp, 16 * Self.mib), "settled at \(final), bdp \(path.bdp)")
        #expect(final <= max(8 * path.bdp, 512 * Self.kib), "settled at \(final), bdp \(path.bdp)")
        #expect(windows.allSatisfy { Int($0) <= 16 * Self.mib })
        #expect(zip(windows, windows.dropFirst()).allSatisfy { $0 <= $1 }, "never shrinks")
    }

    @Test("Where the window already holds four times what the path does (loopback), it never grows, however the data queues",
          arguments: [Path(roundTripMs: 0.05, megabytesPerSecond: 1000), Path(roundTripMs: 0.1, megabytesPerSecond: 1000),
                      Path(roundTripMs: 0.2, megabytesPerSecond: 500), Path(roundTripMs: 0.02, megabytesPerSecond: 5000)])
    func shortPathStays(_ path: Path) {
        let windows = Self.simulate(baseRoundTrip: path.baseRoundTrip, linkBytesPerNs: path.bytesPerNs)
        #expect(windows.allSatisfy { Int($0) == 512 * Self.kib }, "grew to \(windows.max()!)")
    }

    @Test("Without the probes' measure, the first sample sees a queue as the path: two doublings at most")
    func withoutProbeTwoDoublings() {
        let path = Path(roundTripMs: 0.05, megabytesPerSecond: 1000)
        let windows = Self.simulate(baseRoundTrip: path.baseRoundTrip, linkBytesPerNs: path.bytesPerNs, probe: false)
        #expect(windows.max()! <= Int32(2 * Self.mib))
    }

    @Test("A reader that falls behind in every sample keeps the window where it started, whatever the path",
          arguments: [Path(roundTripMs: 20, megabytesPerSecond: 100), Path(roundTripMs: 40, megabytesPerSecond: 1000)])
    func readerBehindBound(_ path: Path) {
        let windows = Self.simulate(baseRoundTrip: path.baseRoundTrip, linkBytesPerNs: path.bytesPerNs, readerFallsBehind: true)
        #expect(windows.allSatisfy { Int($0) == 512 * Self.kib }, "grew to \(windows.max()!)")
    }
}
