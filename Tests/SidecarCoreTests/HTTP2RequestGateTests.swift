import Foundation
@testable import SidecarTLS
import Testing
import TestFixtures
import TestSupport
@testable import SidecarCore
@testable import SidecarModel

// The client-to-service half of the HTTP/2 L7 filter, driven with frames a real HPACK encoder
// produced: what reaches the service, what the client is told, and what ends the connection.

/// Everything that came out of one gate for a whole client byte stream.
private struct GateRun {
    var toService: [UInt8] = []
    var toClient: [UInt8] = []
    var decisions: [HTTP2RequestDecision] = []
    var failure: HTTP2Failure?

    var serviceFrames: [TestFrame] { TestFrame.split(Array(toService.dropFirst(HTTP2Frames.clientPreface.count))) }
    var clientFrames: [TestFrame] { TestFrame.split(toClient) }
    var decided: [String] { decisions.map { "\($0.streamID) \($0.request?.method ?? "-") \($0.decision.allowed ? "allow" : "deny")" } }
}

/// Denies DELETE and anything under /admin; allows the rest.
private func simplePolicy(_ request: HTTPRequestFacts) -> IntentionDecision {
    let denied = request.method == "DELETE" || request.path.hasPrefix("/admin")
    return IntentionDecision(allowed: !denied, reason: .defaultPolicy)
}

private func makeGate(grpc: Bool = false, decide: @escaping (HTTPRequestFacts) -> IntentionDecision = simplePolicy)
    -> HTTP2RequestGate {
    HTTP2RequestGate(grpcService: grpc, encoder: StatelessHeaderEncoder(), decide: decide)
}

@discardableResult
private func feed(_ gate: HTTP2RequestGate, _ bytes: [UInt8], chunk: Int = Int.max, into run: inout GateRun) -> GateRun {
    var offset = 0
    while offset < bytes.count {
        let piece = Array(bytes[offset..<min(bytes.count, offset + chunk)])
        offset += piece.count
        let out = piece.withUnsafeBytes { gate.receive($0) }
        run.toService += materialize(out.toService, input: piece)
        run.toClient += out.toClient.flatMap { $0 }
        run.decisions += out.decisions
        if let failure = out.failure { run.failure = failure }
    }
    return run
}

private func run(_ bytes: [UInt8], chunk: Int = Int.max, grpc: Bool = false,
                 decide: @escaping (HTTPRequestFacts) -> IntentionDecision = simplePolicy) -> GateRun {
    var result = GateRun()
    feed(makeGate(grpc: grpc, decide: decide), bytes, chunk: chunk, into: &result)
    return result
}

@Suite("HTTP/2 request gate")
struct HTTP2RequestGateTests {
    @Test("An allowed GET reaches the service re-encoded, preface and SETTINGS unchanged", arguments: [1, 7, 24, 25, 4096])
    func allowedGet(_ chunk: Int) throws {
        let client = TestH2Client()
        let result = run(TestH2Client.start + client.request(1, "GET", "/repository/a?full=1", [("x-job", "n-1")]), chunk: chunk)
        #expect(result.failure == nil)
        #expect(result.toService.starts(with: TestH2Client.start))
        #expect(result.decided == ["1 GET allow"])
        #expect(result.decisions.first?.request?.path == "/repository/a")
        let blocks = try headerBlocks(result.serviceFrames)
        #expect(blocks.count == 1)
        #expect(blocks.first?.stream == 1 && blocks.first?.endStream == true)
        #expect(blocks.first?.fields == [HTTP2HeaderField(":method", "GET"), HTTP2HeaderField(":scheme", "http"),
                                         HTTP2HeaderField(":authority", "storage"), HTTP2HeaderField(":path", "/repository/a?full=1"),
                                         HTTP2HeaderField("x-job", "n-1")])
        #expect(result.toClient.isEmpty)
    }

    @Test("Pseudo-headers are facts header rules can match, as Envoy exposes them")
    func pseudoHeaderFacts() {
        let result = run(TestH2Client.start + TestH2Client().request(1, "GET", "/a"))
        let request = result.decisions.first?.request
        #expect(request?.method == "GET")
        #expect(request?.header(":authority") == "storage")
        #expect(request?.header(":path") == "/a")
        #expect(request?.header(":scheme") == "http")
    }

    @Test("A denied request gets a header-only 403 and never reaches the service; the next one still does")
    func deniedThenAllowed() throws {
        let client = TestH2Client()
        // The DELETE adds entries to the client's HPACK table that the next block refers to.
        let result = run(TestH2Client.start + client.request(1, "DELETE", "/repository/a", [("x-secret", "s3")])
                         + client.request(3, "GET", "/repository/a", [("x-secret", "s3")]))
        #expect(result.failure == nil)
        #expect(result.decided == ["1 DELETE deny", "3 GET allow"])
        let service = try headerBlocks(result.serviceFrames)
        #expect(service.map(\.stream) == [3])
        #expect(service.first?.fields.contains(HTTP2HeaderField("x-secret", "s3")) == true)
        let answers = try headerBlocks(result.clientFrames)
        #expect(answers.map(\.stream) == [1])
        #expect(answers.first?.endStream == true)
        #expect(answers.first?.fields == [HTTP2HeaderField(":status", "403"), HTTP2HeaderField("content-length", "0")])
        #expect(!result.clientFrames.contains { $0.header.type == HTTP2FrameType.rstStream }, "the request had ended")
    }

    @Test("A denied upload: RST_STREAM(NO_ERROR), its DATA dropped with the credit returned, its trailers dropped")
    func deniedUpload() throws {
        let client = TestH2Client()
        let body = Array(repeating: UInt8(0x41), count: 1000)
        let result = run(TestH2Client.start + client.request(1, "DELETE", "/r", endStream: false)
                         + TestH2Client.data(1, body) + TestH2Client.data(1, [])
                         + client.headers(1, [("x-checksum", "abc")], endStream: true)
                         + client.request(3, "PUT", "/r", endStream: false) + TestH2Client.data(3, [1, 2, 3], endStream: true))
        #expect(result.failure == nil)
        let toService = result.serviceFrames
        #expect(toService.map(\.header.streamID) == [0, 3, 3], "SETTINGS, then only stream 3: \(toService)")
        #expect(toService.last?.payload == [1, 2, 3])
        let toClient = result.clientFrames
        #expect(toClient.map(\.header.type) == [HTTP2FrameType.headers, HTTP2FrameType.rstStream, HTTP2FrameType.windowUpdate])
        #expect(toClient[1].payload == [0, 0, 0, 0])
        #expect(toClient[2] == TestFrame.split(HTTP2Frames.windowUpdate(streamID: 0, increment: 1000))[0])
    }

    @Test("An allowed upload streams through unchanged, trailers included, however it is cut", arguments: [1, 10, 100, 100000])
    func allowedUpload(_ chunk: Int) throws {
        let client = TestH2Client()
        let body = (0..<40000).map { UInt8($0 % 253) }
        let data1 = TestH2Client.data(1, Array(body[..<16384]))
        let data2 = TestH2Client.data(1, Array(body[16384...]))
        let result = run(TestH2Client.start + client.request(1, "PUT", "/r", endStream: false) + data1 + data2
                         + client.headers(1, [("grpc-status", "0")], endStream: true), chunk: chunk)
        #expect(result.failure == nil)
        let frames = result.serviceFrames
        #expect(frames.map(\.header.type) == [4, 1, 0, 0, 1])
        #expect(frames.filter { $0.header.type == 0 }.flatMap(\.payload) == body)
        let blocks = try headerBlocks(frames)
        #expect(blocks.last?.fields == [HTTP2HeaderField("grpc-status", "0")])
        #expect(blocks.last?.endStream == true)
    }

    @Test("Padding is removed and priority kept when a HEADERS frame is re-encoded", arguments: [0, 1, 200])
    func paddingAndPriority(_ padding: Int) throws {
        let block = TestH2Client().block([(":method", "GET"), (":scheme", "http"), (":path", "/p")])
        let priority: [UInt8] = [0x80, 0, 0, 0, 200]
        let frame = HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: 0x2d, streamID: 1,
                                      payload: [UInt8(padding)] + priority + block + Array(repeating: 0, count: padding))
        let result = run(TestH2Client.start + frame)
        #expect(result.failure == nil)
        let headers = try #require(result.serviceFrames.last)
        #expect(headers.header.flags == HTTP2Flag.endStream | HTTP2Flag.endHeaders | HTTP2Flag.priority)
        #expect(Array(headers.payload.prefix(5)) == priority)
        #expect(try headerBlocks([headers]).first?.fields.last == HTTP2HeaderField(":path", "/p"))
    }

    @Test("A header block across HEADERS and CONTINUATION frames", arguments: [1, 2, 5])
    func continuation(_ pieces: Int) throws {
        let block = TestH2Client().block([(":method", "GET"), (":scheme", "http"), (":path", "/admin/x"), ("x-long", String(repeating: "y", count: 300))])
        let size = (block.count + pieces - 1) / pieces
        var bytes = TestH2Client.start
        for index in 0..<pieces {
            let part = Array(block[(index * size)..<min(block.count, (index + 1) * size)])
            let type = index == 0 ? HTTP2FrameType.headers : HTTP2FrameType.continuation
            let flags = (index == 0 ? HTTP2Flag.endStream : 0) | (index == pieces - 1 ? HTTP2Flag.endHeaders : 0)
            bytes += HTTP2Frames.frame(type: type, flags: flags, streamID: 1, payload: part)
        }
        let result = run(bytes)
        #expect(result.failure == nil)
        #expect(result.decided == ["1 GET deny"])
        #expect(result.serviceFrames.count == 1, "only SETTINGS")
    }

    @Test("gRPC denials are trailers-only with grpc-status 7", arguments: [
        (true, "application/json"), (false, "application/grpc"), (false, "application/grpc+proto"), (true, "application/grpc"),
    ])
    func grpcDenial(_ grpcService: Bool, _ contentType: String) throws {
        let result = run(TestH2Client.start + TestH2Client().request(1, "POST", "/admin.Admin/Purge", [("content-type", contentType)]),
                         grpc: grpcService)
        let answer = try #require(try headerBlocks(result.clientFrames).first)
        #expect(answer.endStream)
        #expect(answer.fields.prefix(3) == [HTTP2HeaderField(":status", "200"), HTTP2HeaderField("content-type", "application/grpc"),
                                            HTTP2HeaderField("grpc-status", "7")])
        #expect(answer.fields.last?.name == "grpc-message")
        #expect(answer.fields.last?.value == "denied by intention: default policy")
    }

    @Test("A plain HTTP/2 request to an http2 service gets a 403, not a gRPC status")
    func plain403() throws {
        let result = run(TestH2Client.start + TestH2Client().request(1, "GET", "/admin", [("content-type", "text/plain")]))
        #expect(try headerBlocks(result.clientFrames).first?.fields.first == HTTP2HeaderField(":status", "403"))
    }

    @Test("Frames for streams the service never saw are dropped; those for its streams pass")
    func streamFrames() {
        let client = TestH2Client()
        let windowUpdate1 = HTTP2Frames.windowUpdate(streamID: 1, increment: 100)
        let windowUpdate3 = HTTP2Frames.windowUpdate(streamID: 3, increment: 100)
        let reset3 = HTTP2Frames.rstStream(streamID: 3, error: .cancel)
        let reset1 = HTTP2Frames.rstStream(streamID: 1, error: .cancel)
        let priorityIdle = HTTP2Frames.frame(type: HTTP2FrameType.priority, streamID: 9, payload: [0, 0, 0, 0, 16])
        let pushedWindow = HTTP2Frames.windowUpdate(streamID: 2, increment: 5)
        let unknown = HTTP2Frames.frame(type: 0xbe, streamID: 1, payload: [1, 2, 3])
        let result = run(TestH2Client.start + client.request(1, "DELETE", "/x") + client.request(3, "GET", "/x")
                         + windowUpdate1 + windowUpdate3 + reset1 + reset3 + priorityIdle + pushedWindow + unknown)
        #expect(result.failure == nil)
        let passed = result.serviceFrames.filter { $0.header.type != HTTP2FrameType.headers && $0.header.type != HTTP2FrameType.settings }
        #expect(passed == TestFrame.split(windowUpdate3 + reset3 + pushedWindow))
    }

    @Test("DATA after the service reset the stream is dropped, with its credit returned")
    func dataAfterServiceReset() {
        let client = TestH2Client()
        let gate = makeGate()
        var result = GateRun()
        feed(gate, TestH2Client.start + client.request(1, "PUT", "/x", endStream: false) + TestH2Client.data(1, [1, 2]), into: &result)
        let before = result.toService.count
        gate.serviceReset(streamID: 1)
        feed(gate, TestH2Client.data(1, [3, 4, 5], endStream: true), into: &result)
        #expect(result.toService.count == before)
        #expect(result.toClient == HTTP2Frames.windowUpdate(streamID: 0, increment: 3))
    }

    @Test("The service's header table size applies once the client acknowledges it")
    func headerTableSize() throws {
        let client = TestH2Client(tableSize: 8192)
        let gate = makeGate()
        var result = GateRun()
        feed(gate, TestH2Client.start + client.request(1, "GET", "/a"), into: &result)
        gate.serviceSentSettings(headerTableSize: nil)
        gate.serviceSentSettings(headerTableSize: 8192)
        client.changeTableSize(8192)
        feed(gate, TestH2Client.settingsAck + TestH2Client.settingsAck + client.request(3, "GET", "/b"), into: &result)
        #expect(result.failure == nil)
        #expect(result.decided == ["1 GET allow", "3 GET allow"])

        // Without the acknowledgement the larger table is a compression error.
        let early = TestH2Client(tableSize: 8192)
        early.changeTableSize(8192)
        let refused = run(TestH2Client.start + early.request(1, "GET", "/a"))
        #expect(refused.failure?.code == .compressionError)
    }

    @Test("Malformed requests end the connection before any of their bytes reach the service", arguments: [
        [(":method", "GET"), (":path", "/x")],                                              // no :scheme
        [(":method", "GET"), (":scheme", "http")],                                          // no :path
        [(":scheme", "http"), (":path", "/x")],                                             // no :method
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":path", "/admin")],    // repeated :path
        [(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/x")],           // pseudo after regular
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":status", "200")],     // response pseudo-header
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), ("connection", "close")],
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), ("transfer-encoding", "chunked")],
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), ("te", "gzip")],
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":authority", "a"), ("host", "b")],
        [(":method", "G T"), (":scheme", "http"), (":path", "/x")],
        [(":method", "GET"), (":scheme", "http"), (":path", "")],
        [(":method", "CONNECT"), (":authority", "a:1"), (":path", "/x")],
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), ("X-Upper", "1")],
    ])
    func malformedRequest(_ fields: [(String, String)]) {
        let result = run(TestH2Client.start + TestH2Client().headers(1, fields) + TestH2Client().request(3, "GET", "/x"))
        #expect(result.failure?.code == .protocolError, "\(fields)")
        #expect(result.decisions.isEmpty)
        #expect(result.serviceFrames.count == 1, "only the client's SETTINGS")
        #expect(result.clientFrames.last?.header.type == HTTP2FrameType.goaway)
    }

    @Test("Well-formed variants are accepted", arguments: [
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), ("te", "trailers")],
        [(":method", "GET"), (":scheme", "https"), (":path", "*"), (":authority", "a"), ("host", "a")],
        [(":method", "CONNECT"), (":authority", "a:1")],
        [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", "/ws"), (":authority", "a")],
    ])
    func wellFormed(_ fields: [(String, String)]) {
        let result = run(TestH2Client.start + TestH2Client().headers(1, fields))
        #expect(result.failure == nil)
        #expect(result.decisions.count == 1)
    }

    /// Named so test output lists names, not bytes.
    static let protocolErrorList: [(name: String, bytes: [UInt8], code: HTTP2ErrorCode)] = [
        ("no preface", Array("GET / HTTP/1.1\r\n\r\n".utf8), HTTP2ErrorCode.protocolError),
        ("first frame not SETTINGS", HTTP2Frames.clientPreface + HTTP2Frames.frame(type: HTTP2FrameType.ping, streamID: 0, payload: Array(repeating: 0, count: 8)), .protocolError),
        ("DATA on an idle stream", TestH2Client.start + TestH2Client.data(1, [1]), .protocolError),
        ("DATA on stream 0", TestH2Client.start + TestH2Client.data(0, [1]), .protocolError),
        ("HEADERS on an even stream", TestH2Client.start + TestH2Client().request(2, "GET", "/"), .protocolError),
        ("CONTINUATION alone", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.continuation, flags: 4, streamID: 1, payload: [0x82]), .protocolError),
        ("interrupted header block", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.headers, streamID: 1, payload: [0x82])
            + HTTP2Frames.frame(type: HTTP2FrameType.ping, streamID: 0, payload: Array(repeating: 0, count: 8)), .protocolError),
        ("PUSH_PROMISE from the client", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.pushPromise, flags: 4, streamID: 1, payload: [0, 0, 0, 2]), .protocolError),
        ("PING of 7 bytes", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.ping, streamID: 0, payload: Array(repeating: 0, count: 7)), .frameSizeError),
        ("SETTINGS ack with payload", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.settings, flags: 1, streamID: 0, payload: [0, 1, 0, 0, 0, 0]), .frameSizeError),
        ("SETTINGS on a stream", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.settings, streamID: 1), .protocolError),
        ("RST_STREAM on an idle stream", TestH2Client.start + HTTP2Frames.rstStream(streamID: 5, error: .cancel), .protocolError),
        ("WINDOW_UPDATE of 3 bytes", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.windowUpdate, streamID: 0, payload: [0, 0, 1]), .frameSizeError),
        ("GOAWAY on a stream", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.goaway, streamID: 1, payload: Array(repeating: 0, count: 8)), .protocolError),
        ("self-dependent PRIORITY", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.priority, streamID: 3, payload: [0, 0, 0, 3, 1]), .protocolError),
        ("padding longer than the frame", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: 0x0d, streamID: 1, payload: [9, 0x82, 0x86, 0x84]), .protocolError),
        ("HPACK garbage", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: 5, streamID: 1, payload: [0xff, 0xff, 0xff, 0xff]), .compressionError),
        ("oversized header block", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: 5, streamID: 1, payload: Array(repeating: 0x82, count: 70000)), .enhanceYourCalm),
        ("oversized control frame", TestH2Client.start + HTTP2Frames.frame(type: HTTP2FrameType.goaway, streamID: 0, payload: Array(repeating: 0, count: 70000)), .enhanceYourCalm),
    ]
    static let protocolErrorCases = Dictionary(uniqueKeysWithValues: protocolErrorList.map { ($0.name, ($0.bytes, $0.code)) })

    @Test("Protocol errors end the connection with GOAWAY", arguments: protocolErrorCases.keys.sorted())
    func protocolErrors(_ name: String) throws {
        let (bytes, code) = try #require(Self.protocolErrorCases[name])
        for chunk in [1, 1 << 20] {
            let result = run(bytes + TestH2Client().request(101, "GET", "/after"), chunk: chunk)
            #expect(result.failure?.code == code, "\(name), chunk \(chunk): \(String(describing: result.failure))")
            #expect(result.decisions.isEmpty, "\(name)")
            let goaway = result.clientFrames.last
            #expect(goaway?.header.type == HTTP2FrameType.goaway, "\(name)")
            #expect(goaway.map { UInt32(bytes: $0.payload[4..<8]) } == code.rawValue, "\(name)")
            #expect(!result.serviceFrames.contains { $0.header.type == HTTP2FrameType.headers || $0.header.type == HTTP2FrameType.data },
                    "\(name): nothing of a request passed")
        }
    }

    @Test("After a failure nothing more passes")
    func nothingAfterFailure() {
        let gate = makeGate()
        var result = GateRun()
        feed(gate, TestH2Client.start + TestH2Client.data(1, [1]), into: &result)
        let passed = result.toService.count
        feed(gate, TestH2Client().request(3, "GET", "/x"), into: &result)
        #expect(result.toService.count == passed)
        #expect(result.decisions.isEmpty)
    }

    @Test("The deploy/ policy with HTTP/2 facts: append-only for backup-agent")
    func deployPolicy() throws {
        let set = IntentionSet(L7Fixture.backupPolicy, defaultAction: .deny)
        let agent = SPIFFEID(trustDomain: "td.consul", namespace: "default", datacenter: "dc1", service: "backup-agent")
        let client = TestH2Client()
        var bytes = TestH2Client.start
        for (index, (method, path)) in [("PUT", "/repository/s1"), ("GET", "/repository/s1"), ("DELETE", "/repository/s1"),
                                         ("HEAD", "/repository/"), ("GET", "/admin")].enumerated() {
            bytes += client.request(UInt32(index * 2 + 1), method, path)
        }
        let result = run(bytes) { set.decide(request: $0, source: agent, destination: "storage") }
        #expect(result.decided == ["1 PUT allow", "3 GET allow", "5 DELETE deny", "7 HEAD allow", "9 GET deny"])
        #expect(result.decisions[2].decision.reasonText.contains("permission #1"))
        #expect(try headerBlocks(result.serviceFrames).map(\.stream) == [1, 3, 7])
        #expect(try headerBlocks(result.clientFrames).map(\.stream) == [5, 9])
    }

    @Test("grpc-message is percent-encoded", arguments: [
        ("plain text", "plain text"), ("100%", "100%25"), ("line\nbreak", "line%0Abreak"), ("café", "caf%C3%A9"),
    ])
    func grpcMessage(_ text: String, _ encoded: String) {
        #expect(HTTP2Denial.grpcPercentEncoded(text) == encoded)
    }
}

@Suite("HTTP/2 filter core")
struct HTTP2FilterCoreTests {
    @Test("A denial waits for the service to finish the frame it is writing")
    func denialSplicedAtBoundary() throws {
        let core = HTTP2FilterCore(grpcService: false, decide: simplePolicy)
        let client = TestH2Client()
        let serviceData = TestH2Client.data(1, Array(repeating: 9, count: 64))
        var toClient: [UInt8] = []
        for bytes in [TestH2Client.settings(), Array(serviceData[..<20])] {
            toClient += bytes.withUnsafeBytes { materialize(core.serviceBytes($0), input: bytes) }
        }
        let request = TestH2Client.start + client.request(1, "GET", "/ok") + client.request(3, "DELETE", "/x")
        let step = request.withUnsafeBytes { core.clientBytes($0) }
        #expect(step.toClient.isEmpty, "held: the service is inside a DATA frame")
        #expect(core.queuedForClient > 0)
        let rest = Array(serviceData[20...])
        toClient += rest.withUnsafeBytes { materialize(core.serviceBytes($0), input: rest) }
        #expect(core.queuedForClient == 0)
        let frames = TestFrame.split(toClient)
        #expect(frames.map(\.header.type) == [HTTP2FrameType.settings, HTTP2FrameType.data, HTTP2FrameType.headers])
        #expect(try headerBlocks(frames).first?.fields.first == HTTP2HeaderField(":status", "403"))
    }

    @Test("The service's SETTINGS and resets reach the request side")
    func observationsReachGate() {
        let core = HTTP2FilterCore(grpcService: false, decide: simplePolicy)
        let client = TestH2Client()
        let upload = TestH2Client.start + client.request(1, "PUT", "/x", endStream: false)
        _ = upload.withUnsafeBytes { core.clientBytes($0) }
        let reset = HTTP2Frames.rstStream(streamID: 1, error: .refusedStream)
        _ = reset.withUnsafeBytes { core.serviceBytes($0) }
        let late = TestH2Client.data(1, [1, 2, 3, 4])
        let step = late.withUnsafeBytes { core.clientBytes($0) }
        #expect(step.toService.isEmpty)
        #expect(step.toClient == [HTTP2Frames.windowUpdate(streamID: 0, increment: 4)])
    }
}

/// SplitMix64: a reproducible source for the mutation test below.
private struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

@Suite("HTTP/2 request gate under mutated input")
struct HTTP2RequestGateMutationTests {
    /// A conversation with every kind of frame the gate handles.
    static let base: [UInt8] = {
        let client = TestH2Client()
        // Blocks are encoded in wire order: each may refer to entries the ones before it added.
        var bytes = TestH2Client.start + client.request(1, "PUT", "/repository/a", endStream: false)
            + TestH2Client.data(1, Array(repeating: 1, count: 300))
            + client.request(3, "DELETE", "/repository/a", [("x-a", "1")], endStream: false) + TestH2Client.data(3, [2, 2, 2])
            + TestH2Client.data(1, [3], endStream: true) + HTTP2Frames.windowUpdate(streamID: 0, increment: 1000)
        let block = client.block([(":method", "GET"), (":scheme", "http"), (":path", "/repository/c"), ("x-pad", String(repeating: "p", count: 40))])
        bytes += HTTP2Frames.frame(type: HTTP2FrameType.headers, flags: HTTP2Flag.padded, streamID: 5, payload: [4] + block.prefix(20) + [0, 0, 0, 0])
            + HTTP2Frames.frame(type: HTTP2FrameType.continuation, flags: HTTP2Flag.endHeaders, streamID: 5, payload: Array(block.dropFirst(20)))
            + TestH2Client.data(5, [5, 5], endStream: true) + HTTP2Frames.frame(type: HTTP2FrameType.ping, streamID: 0, payload: Array(repeating: 7, count: 8))
        bytes += client.request(7, "GET", "/admin/x")
        bytes += client.headers(9, [(":method", "POST"), (":scheme", "http"), (":path", "/repository/t")], endStream: false)
        bytes += client.headers(9, [("x-trailer", "t")], endStream: true) + TestH2Client.settingsAck
        return bytes
    }()

    @Test("The conversation mutated below is valid as it is")
    func baseIsValid() throws {
        let result = run(Self.base, chunk: 7)
        #expect(result.failure == nil)
        #expect(result.decided == ["1 PUT allow", "3 DELETE deny", "5 GET allow", "7 GET deny", "9 POST allow"])
        #expect(try headerBlocks(result.serviceFrames).map(\.stream) == [1, 5, 9, 9])
    }

    @Test("Mutated conversations never crash the gate; the service only ever gets whole, stateless, allowed requests", arguments: 0..<8)
    func mutations(_ batch: Int) throws {
        var random = SeededGenerator(state: UInt64(batch) &* 7919)
        for _ in 0..<60 {
            var bytes = Self.base
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                let at = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0..<4, using: &random) {
                case 0: bytes[at] ^= UInt8.random(in: 1...255, using: &random)
                case 1: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...9, using: &random)))
                case 2: bytes.insert(contentsOf: (0..<Int.random(in: 1...9, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }, at: at)
                default: bytes = Array(bytes[..<max(at, HTTP2Frames.clientPreface.count)])
                }
            }
            let result = run(bytes, chunk: Int.random(in: 1...64, using: &random))
            let allowed = Set(result.decisions.filter(\.decision.allowed).map(\.streamID))
            let toService = Array(result.toService.dropFirst(HTTP2Frames.clientPreface.count))
            let frames = TestFrame.split(toService, partial: true) // a DATA frame may be cut by a failure
            for frame in frames where frame.header.type == HTTP2FrameType.headers || frame.header.type == HTTP2FrameType.data {
                #expect(allowed.contains(frame.header.streamID), "stream \(frame.header.streamID) reached the service undecided or denied")
            }
            // Every forwarded block decodes on its own: no HPACK state is shared with the client.
            for frame in frames where frame.header.type == HTTP2FrameType.headers && frame.header.has(HTTP2Flag.endHeaders) {
                let block = frame.header.has(HTTP2Flag.priority) ? Array(frame.payload.dropFirst(5)) : frame.payload
                #expect(throws: Never.self) { try HeaderBlockDecoder().decode(block) }
            }
        }
    }
}

@Suite("L7 protocol of a service")
struct L7ProtocolTests {
    @Test("Proxy config protocol to L7 handling", arguments: [
        ("tcp", nil), ("http", L7Protocol.http), ("http2", .http2), ("grpc", .grpc), ("", nil), ("HTTP2", nil),
    ] as [(String, L7Protocol?)])
    func mapping(_ configProtocol: String, _ expected: L7Protocol?) {
        // Config decoding lowercases the protocol; anything else is not L7.
        #expect(L7Protocol(configProtocol: configProtocol) == expected)
    }
}
