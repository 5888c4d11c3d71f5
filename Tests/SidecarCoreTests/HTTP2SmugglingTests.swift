import Foundation
import Testing
import TestFixtures
@testable import SidecarCore
import TestSupport
@testable import SidecarModel

/// The HTTP/1.1 corpus's path, method and header tricks, and HTTP/2's own, over HTTP/2: each
/// item on a connection of its own, from a client built on the `h2` library (which sends them
/// unvalidated) through both sidecars to an `h2` service that validates what it receives.
@Suite("HTTP/2 smuggling: differential against h2", .serialized)
struct HTTP2SmugglingTests {
    typealias Request = [String: Any]

    static func request(_ method: String, _ path: String, _ extra: [[String]] = [], body: String? = nil,
                        authority: String = "storage") -> Request {
        var headers = [[":method", method], [":scheme", "http"], [":authority", authority], [":path", path]] + extra
        if let body { headers.append(["content-length", "\(body.utf8.count)"]) }
        return ["headers": headers, "body": body as Any]
    }

    static func raw(_ headers: [[String]], body: String? = nil) -> Request { ["headers": headers, "body": body as Any] }

    static var corpus: [(label: String, requests: [Request])] {
        var items: [(String, [Request])] = []
        for target in HTTP1Corpus.targets where !target.contains(" ") {
            items.append(("P GET \(target)", [request("GET", target)]))
            items.append(("P PUT \(target)", [request("PUT", target, body: "snapshot")]))
        }
        for method in ["DELETE", "get", "TRACE", "MOVE", "PATCH", "OPTIONS", "POST", "HEAD", "G ET", "PUT"] {
            items.append(("M \(method)", [request(method, "/repository/a", body: method == "PUT" ? "x" : nil)]))
        }
        let headerTricks: [[String]] = [
            ["X-Check", "bad"], ["x-check", "bad"], ["x-check", "b\r\nad"], ["x-check", "bad\r\nx-other: 1"], ["x-check", " bad"],
            ["connection", "close"], ["transfer-encoding", "chunked"], ["te", "gzip"], ["te", "trailers"], ["upgrade", "h2c"],
            ["keep-alive", "1"], ["proxy-connection", "x"], ["host", "evil.bad.com"], ["host", "storage"], ["x_check", "bad"],
            ["x-check\u{0}", "bad"], ["x check", "bad"], ["", "bad"], [":foo", "bar"],
        ]
        for header in headerTricks { items.append(("H \(header[0].debugDescription)", [request("GET", "/repository/a", [header])])) }
        items.append(("H x-check twice", [request("GET", "/repository/a", [["x-check", "good"], ["x-check", "bad"]])]))
        items.append(("H authority bad.com", [request("GET", "/repository/a", authority: "evil.bad.com")]))
        let pseudo: [(String, [[String]])] = [
            ("missing :path", [[":method", "GET"], [":scheme", "http"], [":authority", "storage"]]),
            ("missing :scheme", [[":method", "GET"], [":authority", "storage"], [":path", "/repository/a"]]),
            ("missing :method", [[":scheme", "http"], [":authority", "storage"], [":path", "/repository/a"]]),
            ("empty :path", [[":method", "GET"], [":scheme", "http"], [":authority", "storage"], [":path", ""]]),
            (":path *", [[":method", "OPTIONS"], [":scheme", "http"], [":authority", "storage"], [":path", "*"]]),
            (":path without /", [[":method", "GET"], [":scheme", "http"], [":authority", "storage"], [":path", "repository/a"]]),
            ("two :path", [[":method", "GET"], [":scheme", "http"], [":authority", "storage"], [":path", "/repository/a"], [":path", "/admin/x"]]),
            ("pseudo after regular", [[":method", "GET"], [":scheme", "http"], ["x-a", "1"], [":authority", "storage"], [":path", "/repository/a"]]),
            ("CONNECT", [[":method", "CONNECT"], [":authority", "storage:443"]]),
            ("extended CONNECT", [[":method", "CONNECT"], [":protocol", "websocket"], [":scheme", "http"], [":authority", "storage"], [":path", "/repository/a"]]),
            ("absolute :path", [[":method", "GET"], [":scheme", "http"], [":authority", "storage"], [":path", "http://storage/admin/x"]]),
        ]
        for (label, headers) in pseudo { items.append(("PS \(label)", [raw(headers)])) }
        items.append(("CL mismatch", [raw([[":method", "PUT"], [":scheme", "http"], [":authority", "storage"], [":path", "/repository/a"],
                                            ["content-length", "2"]], body: "toolong")]))
        items.append(("CL two values", [raw([[":method", "PUT"], [":scheme", "http"], [":authority", "storage"], [":path", "/repository/a"],
                                             ["content-length", "3"], ["content-length", "4"]], body: "abc")]))
        let put: [[String]] = [[":method", "PUT"], [":scheme", "http"], [":authority", "storage"], [":path", "/repository/a"]]
        items.append(("CL exact", [raw(put + [["content-length", "4"]], body: "data")]))
        items.append(("CL short body", [raw(put + [["content-length", "10"]], body: "data")]))
        items.append(("CL on a request without body", [raw(put + [["content-length", "5"]])]))
        items.append(("CL zero without body", [raw(put + [["content-length", "0"]])]))
        items.append(("CL with a sign", [raw(put + [["content-length", "+4"]], body: "data")]))
        items.append(("CL list", [raw(put + [["content-length", "4, 4"]], body: "data")]))
        items.append(("padded DATA within CL", [["headers": put + [["content-length", "4"]], "body": "data", "pad": 10]]))
        items.append(("padded DATA over CL", [["headers": put + [["content-length", "2"]], "body": "data", "pad": 10]]))
        items.append(("padded DATA no CL", [["headers": put, "body": "data", "pad": 200]]))
        items.append(("trailers", [["headers": put, "body": "data", "trailers": [["x-checksum", "abc"]]]]))
        items.append(("trailers with a pseudo-header", [["headers": put, "body": "data", "trailers": [[":path", "/admin/x"]]]]))
        items.append(("trailers before CL is reached", [["headers": put + [["content-length", "9"]], "body": "data",
                                                         "trailers": [["x-checksum", "abc"]]]]))
        items.append(("ML allowed, denied, allowed", [request("GET", "/repository/1"), request("DELETE", "/repository/1"),
                                                      request("GET", "/repository/2")]))
        items.append(("ML denied dot segments between", [request("PUT", "/repository/a", body: "x"),
                                                        request("PUT", "/repository/%2e%2e/admin/x", body: "y"),
                                                        request("GET", "/repository/a")]))
        var random = SplitMix64(seed: 0x2b2)
        func pick<T>(_ choices: [T]) -> T { choices[Int(random.next() % UInt64(choices.count))] }
        for index in 0..<90 {
            let extra = pick([[], [["x-check", "bad"]], [["x-check", "ok"]], [["host", "evil.bad.com"]], [["te", "trailers"]]])
            let method = pick(["GET", "PUT", "DELETE", "POST", "HEAD", "MOVE"])
            let target = pick(HTTP1Corpus.targets.filter { !$0.contains(" ") } + ["/repository/x", "/value/y", "/admin/z"])
            items.append(("GEN #\(index) \(method) \(target)",
                          [request(method, target, extra, body: ["PUT", "POST"].contains(method) ? "data" : nil)]))
        }
        return items
    }

    @Test("The service receives exactly the requests the sidecar allowed, normalised, and never one the policy denies")
    func corpus() async throws {
        let items = Self.corpus
        #expect(items.count >= 200, "corpus size \(items.count)")
        let logPath = FileManager.default.temporaryDirectory.appendingPathComponent("h2-\(UUID().uuidString).jsonl").path
        FileManager.default.createFile(atPath: logPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: logPath) }
        let script = TestCertificates.repositoryRoot.appendingPathComponent("Tests/differential/h2_peer.py").path
        let backend = try ToolProcess(["python3", "-u", script, "serve", logPath], logName: "h2-backend.log")
        defer { backend.stop() }
        #expect(await eventually(timeout: 20) { backend.log.hasPrefix("PORT ") })
        let backendPort = try #require(Int(backend.log.dropFirst(5).prefix { $0 != "\n" }))

        let intentions = try IntentionsFile.decode(Data(HTTP1Corpus.intentionsJSON.utf8), source: "corpus")
        let (storage, audit) = try await MeshFixture.startStorage(backendPort: backendPort,
                                                                  credentials: try TestCertificates.credentials("storage"),
                                                                  intentions: intentions, protocol: "http2")
        try await withTeardown({ await storage.stop() }) {
            let (agent, _) = try await MeshFixture.startAgent(certificate: "backup-agent",
                                                              storagePort: storage.boundAddress(of: Sidecar.publicListenerName)!.port!)
            try await withTeardown({ await agent.stop() }) {
                let upstream = agent.boundAddress(of: "upstream:storage")!.port!

                let input = try JSONSerialization.data(withJSONObject: items.map(\.requests))
                let run = try await ProcessRunner.run(["python3", script, "client", "\(upstream)"], input: input, timeout: 600)
                try #require(run.status == 0, "\(run.output.suffix(500))")
                let outcomes = try #require(try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [[String: Any]])
                #expect(outcomes.count == items.count)
                let ended = await eventually(timeout: 60) {
                    Self.records(logPath).filter { $0["event"] as? String == "closed" }.count >= items.count
                }
                let open = Set(1...items.count).subtracting(Self.records(logPath).filter { $0["event"] as? String == "closed" }.compactMap { $0["conn"] as? Int })
                #expect(ended, "every service connection ended; still open: \(open.sorted().map { items[$0 - 1].label })")
                let received = Dictionary(grouping: Self.records(logPath), by: { $0["conn"] as? Int ?? 0 })

                // Audit lines per item: each item is one tunnel, decided (authorization) before its requests.
                var groups: [[AuditEvent]] = []
                for event in audit.events where event.kind == .authorization || event.kind == .httpRequest {
                    if event.kind == .authorization { groups.append([]) } else if !groups.isEmpty { groups[groups.count - 1].append(event) }
                }
                #expect(groups.count == items.count, "one tunnel per item (\(groups.count))")
                var refused = 0, allowedTotal = 0
                for (index, item) in items.enumerated() where index < groups.count {
                    let seen = (received[index + 1] ?? []).filter { $0["event"] as? String == "request" }
                    let allowed = groups[index].filter { $0.decision == "allow" }
                    allowedTotal += allowed.count
                    if groups[index].contains(where: { $0.reason?.contains("refused") == true || $0.reason?.contains("malformed") == true }) {
                        refused += 1
                    }
                    let seenKeys = seen.map { "\($0["method"] as? String ?? "?") \(($0["path"] as? String ?? "").prefix { $0 != "?" })" }
                    let allowedKeys = allowed.map { "\($0.method ?? "?") \($0.path ?? "?")" }
                    // A request found malformed after it was allowed (its body broke its content-length)
                    // is cut with its connection: the service never sees it complete.
                    let cut = groups[index].contains { $0.reason?.contains("malformed") == true }
                    if cut {
                        #expect(Set(seenKeys).isSubset(of: Set(allowedKeys)), "\(item.label): service saw \(seenKeys), allowed \(allowedKeys)")
                    } else {
                        #expect(Set(seenKeys) == Set(allowedKeys) && seenKeys.count == allowedKeys.count,
                                "\(item.label): service saw \(seenKeys), allowed \(allowedKeys)")
                    }
                    for request in seen {
                        let method = request["method"] as? String ?? "", path = request["path"] as? String ?? ""
                        let headers = (request["headers"] as? [[String]] ?? []).map { $0[0] == ":authority" ? ["host", $0[1]] : $0 }
                        if let violation = HTTP1Corpus.violatesPolicy(method: method, target: path, headers: headers) {
                            Issue.record("\(item.label): the service received a denied request (\(violation)): \(method) \(path)")
                        }
                    }
                    for error in (received[index + 1] ?? []) where error["event"] as? String == "error" {
                        let detail = error["detail"] as? String ?? ""
                        if !detail.hasPrefix("transport") { Issue.record("\(item.label): the service saw a protocol error: \(detail)") }
                    }
                }
                #expect(refused > 20 && allowedTotal > 30, "refused \(refused), allowed \(allowedTotal)")
            }
        }
    }

    static func records(_ path: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }
}
