import Testing
@testable import SidecarMux

/// The receive-window autotuning rule on its own: synthetic clocks, no sockets.
@Suite("Mux receive-window tuning")
struct ReceiveWindowTuningTests {
    static let kib = 1 << 10, mib = 1 << 20
    static let ms: Int64 = 1_000_000
    static let limits = ReceiveWindowTuning.Limits(initialWindow: Int32(512 * kib), maximumWindow: Int32(16 * mib))

    @Test("The first data starts a sample; what arrives until its ACK counts, the data that started it does not")
    func sampleStartsOnData() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = tuning.received(64 * Self.kib, on: 1, now: 0)
        #expect(tag != nil && tag != 0)
        #expect(tuning.outstanding?.tag == tag)
        #expect(tuning.streams[1] == .init(window: Int32(512 * Self.kib)))
        #expect(tuning.received(300 * Self.kib, on: 1, now: Self.ms) == nil, "one sample at a time")
        #expect(tuning.received(10, on: 3, now: Self.ms) == nil)
        #expect(tuning.streams[1]?.sampled == 300 * Self.kib)
        #expect(tuning.streams[3]?.sampled == 10)
    }

    @Test("An ACK with another tag (a keepalive PING's, a stale or a forged one) grows nothing and keeps the sample", arguments: [0, 2, 99, 1 << 40] as [UInt64])
    func foreignAckIgnored(offset: UInt64) {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = tuning.received(1, on: 1, now: 0)!
        _ = tuning.received(Self.mib, on: 1, now: 1)
        let other = offset == 0 ? 0 : tag &+ offset
        #expect(tuning.acknowledged(tag: other, now: 20 * Self.ms).isEmpty)
        #expect(tuning.outstanding?.tag == tag)
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 1, window: Int32(Self.mib))])
        #expect(tuning.acknowledged(tag: tag, now: 21 * Self.ms).isEmpty, "an ACK counts once")
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var window: Int
        var sampled: Int
        var roundTrip: Int64
        var bandwidthAtLastGrowth: Double
        var grown: Int?
        var why: String
        var testDescription: String { why }
    }

    static let cases: [Case] = [
        Case(window: 512 * kib, sampled: 255 * kib, roundTrip: 20 * ms, bandwidthAtLastGrowth: 0, grown: nil,
             why: "under half the window in a round trip: not held back by it"),
        Case(window: 512 * kib, sampled: 256 * kib, roundTrip: 20 * ms, bandwidthAtLastGrowth: 0, grown: mib,
             why: "exactly half: doubles"),
        Case(window: 512 * kib, sampled: 512 * kib, roundTrip: 1, bandwidthAtLastGrowth: 0, grown: mib,
             why: "a whole window within a nanosecond: doubles, never more"),
        Case(window: 12 * mib, sampled: 12 * mib, roundTrip: 20 * ms, bandwidthAtLastGrowth: 0, grown: 16 * mib,
             why: "capped at the maximum"),
        Case(window: 16 * mib, sampled: 16 * mib, roundTrip: 20 * ms, bandwidthAtLastGrowth: 0, grown: nil,
             why: "at the maximum: stays"),
        Case(window: mib, sampled: 768 * kib, roundTrip: 20 * ms, bandwidthAtLastGrowth: Double(768 * kib) / Double(20 * ms), grown: nil,
             why: "no faster than at the last growth (a reader-bound stream filling its window): stays"),
        Case(window: mib, sampled: 960 * kib, roundTrip: 20 * ms, bandwidthAtLastGrowth: Double(768 * kib) / Double(20 * ms), grown: nil,
             why: "exactly a quarter faster: stays"),
        Case(window: mib, sampled: 961 * kib, roundTrip: 20 * ms, bandwidthAtLastGrowth: Double(768 * kib) / Double(20 * ms), grown: 2 * mib,
             why: "more than a quarter faster: doubles"),
        Case(window: mib, sampled: mib, roundTrip: 40 * ms, bandwidthAtLastGrowth: Double(768 * kib) / Double(20 * ms), grown: nil,
             why: "more bytes over a longer round trip, slower: stays"),
        Case(window: 2 * mib, sampled: 0, roundTrip: 20 * ms, bandwidthAtLastGrowth: 0, grown: nil,
             why: "nothing arrived"),
    ]

    @Test("One sample's verdict", arguments: cases)
    func verdict(_ c: Case) {
        var stream = ReceiveWindowTuning.Stream(window: Int32(c.window), bandwidthAtLastGrowth: c.bandwidthAtLastGrowth, sampled: c.sampled)
        let before = stream
        let grown = ReceiveWindowTuning.grownWindow(&stream, roundTrip: c.roundTrip, maximum: Int32(16 * Self.mib))
        #expect(grown.map(Int.init) == c.grown)
        if let grown {
            #expect(stream.window == grown)
            #expect(stream.bandwidthAtLastGrowth == Double(c.sampled) / Double(c.roundTrip))
        } else {
            #expect(stream == before, "a stream that stays keeps its state")
        }
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
                if let last { gaps.append((now - last) / Self.ms) }
                last = now
                #expect(tuning.acknowledged(tag: tag, now: now + Self.ms).isEmpty)
            }
        }
        #expect(Array(gaps.prefix(8)) == [20, 40, 80, 160, 320, 640, 1000, 1000])
        #expect(gaps.allSatisfy { $0 <= 1000 })
        // Then a burst: the next sample grows the window, and sampling is frequent again.
        now += 1000 * Self.ms
        let tag = tuning.received(1, on: 1, now: now)!
        _ = tuning.received(400 * Self.kib, on: 1, now: now + 1)
        #expect(tuning.acknowledged(tag: tag, now: now + 2 * Self.ms).count == 1)
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
        let tag = tuning.received(1, on: 1, now: 0)!
        _ = tuning.received(Self.mib, on: 1, now: 1)
        _ = tuning.received(Self.mib, on: 3, now: 1)
        tuning.closed(1)
        #expect(tuning.streams[1] == nil)
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 3, window: Int32(Self.mib))])
    }

    @Test("Each stream is judged on its own bytes: a busy one grows, an idle neighbour stays")
    func streamsJudgedApart() {
        var tuning = ReceiveWindowTuning(limits: Self.limits)
        let tag = tuning.received(1, on: 1, now: 0)!
        _ = tuning.received(400 * Self.kib, on: 1, now: 1)
        _ = tuning.received(4 * Self.kib, on: 5, now: 1)
        #expect(tuning.acknowledged(tag: tag, now: 20 * Self.ms) == [.init(streamID: 1, window: Int32(Self.mib))])
        #expect(tuning.streams[5]?.window == Int32(512 * Self.kib))
        #expect(tuning.streams.values.allSatisfy { $0.sampled == 0 }, "every sample starts from nothing")
    }

    /// One stream over a link, one round trip per step: what arrives in a round trip is what
    /// the window lets through (about three quarters of it, as credit comes back in halves),
    /// what the link carries, or what the reader takes, whichever is least.
    static func simulate(roundTripMs: Int64, linkBytesPerRoundTrip: Int, readerBytesPerRoundTrip: Int, rounds: Int = 200) -> [Int32] {
        var tuning = ReceiveWindowTuning(limits: limits)
        var now: Int64 = 0
        var windows: [Int32] = []
        for _ in 0..<rounds {
            let window = Int(tuning.streams[1]?.window ?? limits.initialWindow)
            let arriving = min(window * 3 / 4, linkBytesPerRoundTrip, readerBytesPerRoundTrip)
            if let tag = tuning.received(arriving, on: 1, now: now) {
                _ = tuning.received(arriving, on: 1, now: now + 1)
                _ = tuning.acknowledged(tag: tag, now: now + roundTripMs * ms)
            }
            now += roundTripMs * ms
            windows.append(tuning.streams[1]!.window)
        }
        return windows
    }

    @Test("Over a link, the window settles at twice the link's bytes per round trip or more, and never past the maximum",
          arguments: [(20, 100 * mib / 50), (20, 30 * mib / 50), (5, 50 * mib / 200), (1, 500 * mib / 1000), (40, 1000 * mib / 25)])
    func linkBound(roundTripMs: Int, linkBytesPerRoundTrip: Int) {
        let windows = Self.simulate(roundTripMs: Int64(roundTripMs), linkBytesPerRoundTrip: linkBytesPerRoundTrip,
                                    readerBytesPerRoundTrip: .max)
        let final = Int(windows.last!)
        #expect(final >= min(2 * linkBytesPerRoundTrip, 16 * Self.mib), "settled at \(final)")
        #expect(windows.allSatisfy { Int($0) <= 16 * Self.mib })
        #expect(zip(windows, windows.dropFirst()).allSatisfy { $0 <= $1 }, "never shrinks")
    }

    @Test("Behind a slow reader the window stays small: at most one doubling past what the reader takes per round trip",
          arguments: [(20, 64 * kib), (20, 256 * kib), (20, 300 * kib), (5, 200 * kib), (1, 100 * kib)])
    func readerBound(roundTripMs: Int, readerBytesPerRoundTrip: Int) {
        let windows = Self.simulate(roundTripMs: Int64(roundTripMs), linkBytesPerRoundTrip: .max,
                                    readerBytesPerRoundTrip: readerBytesPerRoundTrip)
        let final = Int(windows.last!)
        #expect(final <= max(512 * Self.kib, 4 * readerBytesPerRoundTrip), "settled at \(final)")
    }
}
