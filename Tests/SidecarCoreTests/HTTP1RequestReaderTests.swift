import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarModel

/// The strict HTTP/1.1 request reader of the L7 filter: head syntax, meaning and framing,
/// chunked bodies. Pure; the hostile end-to-end corpus is in HTTP1SmugglingTests.
@Suite("HTTP/1.1 request reader")
struct HTTP1RequestReaderTests {
    /// What reading `raw` as one request gives: the request, or the refusal.
    static func read(_ raw: String, _ options: PathNormalization = PathNormalization(),
                     underscores: UnderscoreHeaders = .allow) -> Result<HTTP1Request, HTTP1Refusal>? {
        let bytes = Array(raw.utf8)
        let outcome = bytes.withUnsafeBytes { HTTP1HeadReader.read($0) }
        switch outcome {
        case .needMore: return nil
        case .refused(let refusal): return .failure(refusal)
        case .head(let head, _): return HTTP1RequestRules.interpret(head, paths: options, underscores: underscores)
        }
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var label: String
        var raw: String
        /// nil: accepted.
        var refusedWith: Int?
        var testDescription: String { label }
    }

    static let h = "Host: storage\r\n"

    static let cases: [Case] = [
        Case(label: "plain GET", raw: "GET /repository/ HTTP/1.1\r\n\(h)\r\n"),
        Case(label: "HTTP/1.0 without Host", raw: "GET / HTTP/1.0\r\n\r\n"),
        Case(label: "leading empty line", raw: "\r\nGET / HTTP/1.1\r\n\(h)\r\n"),
        Case(label: "five leading empty lines", raw: "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "PUT with Content-Length", raw: "PUT /r/x HTTP/1.1\r\n\(h)Content-Length: 5\r\n\r\n"),
        Case(label: "chunked, capital C", raw: "POST /r/x HTTP/1.1\r\n\(h)Transfer-Encoding: Chunked\r\n\r\n"),
        Case(label: "chunked with whitespace around", raw: "POST /r/x HTTP/1.1\r\n\(h)Transfer-Encoding:  chunked \t\r\n\r\n"),
        Case(label: "absolute-form", raw: "DELETE http://storage/repository/x HTTP/1.1\r\n\(h)\r\n"),
        Case(label: "OWS in values", raw: "GET / HTTP/1.1\r\nHost:storage\r\nX-A:\t v \r\n\r\n"),
        Case(label: "UTF-8 in a value", raw: "GET / HTTP/1.1\r\n\(h)X-Name: caf\u{e9}\r\n\r\n"),
        Case(label: "Expect 100-continue", raw: "PUT / HTTP/1.1\r\n\(h)Expect: 100-Continue\r\nContent-Length: 1\r\n\r\n"),
        Case(label: "methods are tokens", raw: "M-SEARCH / HTTP/1.1\r\n\(h)\r\n"),
        // request line
        Case(label: "bare LF line ends", raw: "GET / HTTP/1.1\n\(h)\n", refusedWith: 400),
        Case(label: "bare LF in a header", raw: "GET / HTTP/1.1\r\nHost: storage\nX: y\r\n\r\n", refusedWith: 400),
        Case(label: "bare CR", raw: "GET / HTTP/1.1\r\nHost: st\rorage\r\n\r\n", refusedWith: 400),
        Case(label: "two spaces", raw: "GET  / HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "tab separator", raw: "GET\t/ HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "trailing space", raw: "GET / HTTP/1.1 \r\n\(h)\r\n", refusedWith: 400),
        Case(label: "HTTP/0.9", raw: "GET /\r\n\r\n", refusedWith: 400),
        Case(label: "HTTP/1.2", raw: "GET / HTTP/1.2\r\n\(h)\r\n", refusedWith: 505),
        Case(label: "HTTP/2.0 line", raw: "GET / HTTP/2.0\r\n\(h)\r\n", refusedWith: 505),
        Case(label: "lower-case version", raw: "GET / http/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "h2 preface", raw: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", refusedWith: 505),
        Case(label: "lower-case method", raw: "delete /repository/x HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "method with a slash", raw: "GE/T / HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "non-ASCII in the target", raw: "GET /caf\u{e9} HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "CONNECT", raw: "CONNECT storage:443 HTTP/1.1\r\n\(h)\r\n", refusedWith: 405),
        Case(label: "asterisk-form", raw: "OPTIONS * HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "relative target", raw: "GET repository HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "absolute-form with userinfo", raw: "GET http://u@storage/ HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "ftp absolute-form", raw: "GET ftp://storage/ HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "target too long", raw: "GET /\(String(repeating: "a", count: 9000)) HTTP/1.1\r\n\(h)\r\n", refusedWith: 414),
        // fields
        Case(label: "space before colon", raw: "GET / HTTP/1.1\r\nHost : storage\r\n\r\n", refusedWith: 400),
        Case(label: "empty name", raw: "GET / HTTP/1.1\r\n\(h): x\r\n\r\n", refusedWith: 400),
        Case(label: "obs-fold", raw: "GET / HTTP/1.1\r\n\(h)X-A: a\r\n b\r\n\r\n", refusedWith: 400),
        Case(label: "no colon", raw: "GET / HTTP/1.1\r\n\(h)X-A\r\n\r\n", refusedWith: 400),
        Case(label: "NUL in a value", raw: "GET / HTTP/1.1\r\n\(h)X-A: a\u{0}b\r\n\r\n", refusedWith: 400),
        Case(label: "vertical tab in a value", raw: "GET / HTTP/1.1\r\n\(h)X-A: a\u{b}b\r\n\r\n", refusedWith: 400),
        Case(label: "DEL in a value", raw: "GET / HTTP/1.1\r\n\(h)X-A: a\u{7f}\r\n\r\n", refusedWith: 400),
        Case(label: "name with a slash", raw: "GET / HTTP/1.1\r\n\(h)X/A: b\r\n\r\n", refusedWith: 400),
        Case(label: "too many fields", raw: "GET / HTTP/1.1\r\n\(h)" + String(repeating: "X: y\r\n", count: 100) + "\r\n", refusedWith: 431),
        // Host
        Case(label: "missing Host", raw: "GET / HTTP/1.1\r\n\r\n", refusedWith: 400),
        Case(label: "two Hosts", raw: "GET / HTTP/1.1\r\n\(h)\(h)\r\n", refusedWith: 400),
        Case(label: "two Hosts on 1.0", raw: "GET / HTTP/1.0\r\n\(h)\(h)\r\n", refusedWith: 400),
        Case(label: "Host with userinfo", raw: "GET / HTTP/1.1\r\nHost: a@storage\r\n\r\n", refusedWith: 400),
        Case(label: "Host with a path", raw: "GET / HTTP/1.1\r\nHost: storage/x\r\n\r\n", refusedWith: 400),
        Case(label: "empty Host", raw: "GET / HTTP/1.1\r\nHost:\r\n\r\n", refusedWith: 400),
        Case(label: "Host with a bad port", raw: "GET / HTTP/1.1\r\nHost: storage:8x\r\n\r\n", refusedWith: 400),
        Case(label: "IPv6 Host", raw: "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
        // framing
        Case(label: "TE gzip, chunked", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: gzip, chunked\r\n\r\n", refusedWith: 400),
        Case(label: "TE chunked, identity", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: chunked, identity\r\n\r\n", refusedWith: 400),
        Case(label: "TE chunked twice in a list", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: chunked, chunked\r\n\r\n", refusedWith: 400),
        Case(label: "two TE fields", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", refusedWith: 400),
        Case(label: "TE identity", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: identity\r\n\r\n", refusedWith: 400),
        Case(label: "TE xchunked", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: xchunked\r\n\r\n", refusedWith: 400),
        Case(label: "TE chunked with a parameter", raw: "POST / HTTP/1.1\r\n\(h)Transfer-Encoding: chunked;q=1\r\n\r\n", refusedWith: 400),
        Case(label: "TE and CL", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", refusedWith: 400),
        Case(label: "TE on HTTP/1.0", raw: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", refusedWith: 400),
        Case(label: "Transfer_Encoding is just a header", raw: "POST / HTTP/1.1\r\n\(h)Transfer_Encoding: chunked\r\n\r\n"),
        Case(label: "CL twice, equal", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 5\r\nContent-Length: 5\r\n\r\n", refusedWith: 400),
        Case(label: "CL twice, different", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 5\r\nContent-Length: 6\r\n\r\n", refusedWith: 400),
        Case(label: "CL list", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 5, 5\r\n\r\n", refusedWith: 400),
        Case(label: "CL with a sign", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: +5\r\n\r\n", refusedWith: 400),
        Case(label: "CL negative", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: -1\r\n\r\n", refusedWith: 400),
        Case(label: "CL hex", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 0x5\r\n\r\n", refusedWith: 400),
        Case(label: "CL with inner space", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 5 5\r\n\r\n", refusedWith: 400),
        Case(label: "CL empty", raw: "POST / HTTP/1.1\r\n\(h)Content-Length:\r\n\r\n", refusedWith: 400),
        Case(label: "CL overflow", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 18446744073709551617\r\n\r\n", refusedWith: 400),
        Case(label: "CL with leading zeros", raw: "POST / HTTP/1.1\r\n\(h)Content-Length: 005\r\n\r\n"),
        Case(label: "TRACE with a body", raw: "TRACE / HTTP/1.1\r\n\(h)Content-Length: 5\r\n\r\n", refusedWith: 400),
        Case(label: "TRACE chunked", raw: "TRACE / HTTP/1.1\r\n\(h)Transfer-Encoding: chunked\r\n\r\n", refusedWith: 400),
        Case(label: "TRACE with CL 0", raw: "TRACE / HTTP/1.1\r\n\(h)Content-Length: 0\r\n\r\n"),
        // protocol switches
        Case(label: "Upgrade h2c", raw: "GET / HTTP/1.1\r\n\(h)Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n", refusedWith: 400),
        Case(label: "Upgrade websocket", raw: "GET / HTTP/1.1\r\n\(h)Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", refusedWith: 400),
        Case(label: "HTTP2-Settings alone", raw: "GET / HTTP/1.1\r\n\(h)HTTP2-Settings: AAMAAABk\r\n\r\n", refusedWith: 400),
        Case(label: "Expect other than 100-continue", raw: "PUT / HTTP/1.1\r\n\(h)Expect: 200-ok\r\n\r\n", refusedWith: 417),
        // paths
        Case(label: "dot segments are normalised", raw: "PUT /repository/../outside HTTP/1.1\r\n\(h)\r\n"),
        Case(label: "fragment", raw: "GET /a#x HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "encoded slash", raw: "GET /a%2Fb HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
        Case(label: "backslash", raw: "GET /a\\b HTTP/1.1\r\n\(h)\r\n", refusedWith: 400),
    ]

    @Test("accepts one spelling, refuses the rest", arguments: cases)
    func readsOrRefuses(_ row: Case) throws {
        let result = try #require(Self.read(row.raw), "head incomplete")
        switch result {
        case .success(let request):
            #expect(row.refusedWith == nil, "accepted: \(request)")
        case .failure(let refusal):
            #expect(refusal.status == row.refusedWith, "refused: \(refusal)")
        }
    }

    @Test("framing: one field of ours, the client's removed")
    func framing() throws {
        let chunked = try #require(Self.read("POST /r/x HTTP/1.1\r\n\(Self.h)Transfer-Encoding: Chunked\r\nX: 1\r\n\r\n")).get()
        #expect(chunked.framing == .chunked)
        #expect(!chunked.fields.contains { $0.name.lowercased() == "transfer-encoding" })
        #expect(chunked.nioHead.headers["transfer-encoding"] == ["chunked"])
        let length = try #require(Self.read("PUT /r/x HTTP/1.1\r\n\(Self.h)Content-Length: 007\r\n\r\n")).get()
        #expect(length.framing == .length(7))
        #expect(length.nioHead.headers["content-length"] == ["7"])
        let none = try #require(Self.read("GET /r/x HTTP/1.1\r\n\(Self.h)\r\n")).get()
        #expect(none.framing == .none)
        #expect(!none.nioHead.headers.contains(name: "content-length") && !none.nioHead.headers.contains(name: "transfer-encoding"))
    }

    @Test("absolute-form becomes origin-form, its authority replaces Host")
    func absoluteForm() throws {
        let request = try #require(Self.read("DELETE http://Other:81/repository/x?y HTTP/1.1\r\nHost: storage\r\n\r\n")).get()
        #expect(request.target.target == "/repository/x?y")
        #expect(request.authority == "Other:81")
        #expect(request.fields == [HTTP1Field("Host", "Other:81")])
        #expect(request.rawTarget == "http://Other:81/repository/x?y")
        let bare = try #require(Self.read("GET http://storage HTTP/1.0\r\n\r\n")).get()
        #expect(bare.target.target == "/")
        #expect(bare.fields == [HTTP1Field("Host", "storage")])
    }

    @Test("facts carry the pseudo-headers of HTTP/2 and the normalised path")
    func facts() throws {
        let request = try #require(Self.read("GET /a/../b?q=1 HTTP/1.1\r\nHost: storage:8080\r\nX-Job: n\r\n\r\n")).get()
        let facts = request.facts
        #expect(facts.method == "GET")
        #expect(facts.path == "/b")
        #expect(facts.header(":path") == "/b?q=1")
        #expect(facts.header(":authority") == "storage:8080")
        #expect(facts.header(":method") == "GET")
        #expect(facts.header(":scheme") == "https")
        #expect(facts.header("host") == "storage:8080")
        #expect(facts.header("x-job") == "n")
    }

    @Test("keep-alive and Expect")
    func connectionSemantics() throws {
        #expect(try #require(Self.read("GET / HTTP/1.1\r\n\(Self.h)\r\n")).get().keepAlive)
        #expect(try !#require(Self.read("GET / HTTP/1.1\r\n\(Self.h)Connection: keep-alive, close\r\n\r\n")).get().keepAlive)
        #expect(try !#require(Self.read("GET / HTTP/1.0\r\n\r\n")).get().keepAlive)
        #expect(try #require(Self.read("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")).get().keepAlive)
        #expect(try #require(Self.read("PUT / HTTP/1.1\r\n\(Self.h)Expect: 100-continue\r\nContent-Length: 3\r\n\r\n")).get().expectsContinue)
    }

    @Test("header names with underscores", arguments: [UnderscoreHeaders.allow, .reject, .drop])
    func underscores(_ action: UnderscoreHeaders) {
        let result = Self.read("GET / HTTP/1.1\r\n\(Self.h)X_Job: a\r\nX-Job: b\r\n\r\n", underscores: action)
        switch (action, result) {
        case (.allow, .success(let request)?): #expect(request.fields.count == 3)
        case (.reject, .failure(let refusal)?): #expect(refusal.status == 400)
        case (.drop, .success(let request)?): #expect(request.fields.map(\.name) == ["Host", "X-Job"])
        default: Issue.record("\(action): \(String(describing: result))")
        }
    }

    @Test("a head split anywhere reads the same, without rescanning from the start")
    func splitHead() throws {
        let raw = Array("\r\nPUT /r/./x HTTP/1.1\r\nHost: storage\r\nContent-Length: 3\r\n\r\nabc".utf8)
        let whole = raw.withUnsafeBytes { HTTP1HeadReader.read($0) }
        guard case .head(let expected, let length) = whole else { Issue.record("\(whole)"); return }
        #expect(length == raw.count - 3)
        for cut in 1..<length {
            let first = raw[..<cut].withUnsafeBytes { HTTP1HeadReader.read(UnsafeRawBufferPointer($0)) }
            guard case .needMore(let scanned) = first else { Issue.record("cut \(cut): \(first)"); continue }
            let second = raw.withUnsafeBytes { HTTP1HeadReader.read($0, scanned: scanned) }
            #expect(second == .head(expected, length: length), "cut \(cut)")
        }
    }

    @Test("a head that never ends is refused at the limit")
    func endlessHead() {
        let raw = Array(("GET / HTTP/1.1\r\n" + String(repeating: "X-Pad: aaaaaaaaaaaaaaaa\r\n", count: 3000)).utf8)
        let outcome = raw.withUnsafeBytes { HTTP1HeadReader.read($0) }
        #expect(outcome == .refused(HTTP1Refusal(431, "request head larger than \(HTTP1HeadReader.maxHeadBytes) bytes")))
    }
}

@Suite("Chunked body reader")
struct ChunkedBodyReaderTests {
    /// Feeds `body` in pieces of `chunk` bytes; returns the data and whether the end was seen,
    /// or the refusal.
    static func read(_ body: String, chunk: Int = .max) -> Result<(data: String, ended: Bool, rest: Int), HTTP1Refusal> {
        var reader = ChunkedBodyReader()
        let bytes = Array(body.utf8)
        var data: [UInt8] = []
        var offset = 0
        var ended = false
        while offset < bytes.count && !ended {
            let piece = Array(bytes[offset..<min(bytes.count, offset + chunk)])
            let result = piece.withUnsafeBytes { reader.feed($0) }
            switch result {
            case .failure(let refusal): return .failure(refusal)
            case .success(let (events, consumed)):
                for event in events {
                    switch event {
                    case .data(let range): data += piece[range]
                    case .end: ended = true
                    }
                }
                offset += consumed
                if !ended { #expect(consumed == piece.count) }
            }
        }
        return .success((String(decoding: data, as: UTF8.self), ended, bytes.count - offset))
    }

    @Test("valid bodies, split at every size", arguments: [
        ("5\r\nhello\r\n0\r\n\r\n", "hello"),
        ("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
        ("A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
        ("a;name=value\r\n0123456789\r\n0;x\r\n\r\n", "0123456789"),
        ("5 ;ext\r\nhello\r\n0\r\n\r\n", "hello"),
        ("5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", "hello"),
        ("0\r\n\r\n", ""),
        ("000\r\n\r\n", ""),
        ("00005\r\nhello\r\n0\r\n\r\n", "hello"),
    ])
    func valid(_ body: String, _ expected: String) throws {
        for chunk in [1, 2, 3, 7, Int.max] {
            let result = try Self.read(body + "GET", chunk: chunk).get()
            #expect(result.data == expected && result.ended && result.rest == 3, "chunk \(chunk): \(result)")
        }
    }

    @Test("malformed bodies are refused", arguments: [
        "0x5\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "+5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "5 5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhelloX\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\n\n",
        "5\r\nhello\r\n0\n\r\n",
        "\r\nhello\r\n0\r\n\r\n",
        "g\r\nhello\r\n0\r\n\r\n",
        "1000000000000000\r\n",
        "5;a\u{0}b\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
        "5\r\nhello\r\n0\r\nHost: x\r\n\r\n",
        "5\r\nhello\r\n0\r\n bad: fold\r\n\r\n",
        "5\r\nhello\r\n0\r\nno colon\r\n\r\n",
    ])
    func malformed(_ body: String) {
        for chunk in [1, 4, Int.max] {
            guard case .failure(let refusal) = Self.read(body, chunk: chunk) else {
                Issue.record("chunk \(chunk): accepted \(body.debugDescription)")
                continue
            }
            #expect(refusal.status == 400)
        }
    }

    @Test("a request hidden in chunk data stays body data (the finding of issue 16)")
    func requestInChunkData() throws {
        let hidden = "0\r\n\r\nDELETE /repository/snap HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        let body = String(hidden.utf8.count, radix: 16) + "\r\n" + hidden + "\r\n0\r\n\r\n"
        for chunk in [1, 5, Int.max] {
            let result = try Self.read(body, chunk: chunk).get()
            #expect(result.data == hidden && result.ended && result.rest == 0)
        }
    }
}
