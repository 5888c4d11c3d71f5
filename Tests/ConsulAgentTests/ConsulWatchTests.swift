import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing
import TestFixtures
@testable import ConsulAgent
@testable import SidecarCore
import TestSupport
@testable import SidecarModel

/// A blocking watch against an agent that misbehaves on purpose.
@Suite("Consul watches survive a misbehaving agent", .serialized)
struct ConsulWatchTests {
    enum Fault: Sendable, CaseIterable {
        case truncatedJSON, wrongTypes, serverError, forbidden
        var reason: String {
            switch self {
            case .truncatedJSON, .wrongTypes: return "malformed"
            case .serverError: return "http_500"
            case .forbidden: return "http_403"
            }
        }
    }

    struct AgentState: Sendable {
        var fault: Fault?
        var serial = "aa:01"
        var index = 5
    }

    static func leafJSON(serial: String, index: Int) -> String {
        """
        {"SerialNumber": "\(serial)", "CertPEM": "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n",
         "PrivateKeyPEM": "-----BEGIN EC PRIVATE KEY-----\\nMHc\\n-----END EC PRIVATE KEY-----\\n",
         "Service": "storage", "ServiceURI": "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/storage",
         "ValidAfter": "2026-11-29T10:00:00Z", "ValidBefore": "2026-12-02T10:00:00Z",
         "CreateIndex": \(index), "ModifyIndex": \(index), "UnknownFutureField": {"nested": [1, null]}}
        """
    }

    static func reply(_ state: AgentState, uri: String) -> ScriptedHTTPServer.Reply {
        let requested = URLComponents(string: uri)?.queryItems?.first { $0.name == "index" }?.value.flatMap { Int($0) } ?? 0
        let indexHeader = [("X-Consul-Index", "\(state.index)")]
        switch state.fault {
        case nil:
            // A blocking query for the current index waits (briefly here) and answers the same.
            return .init(headers: indexHeader, body: leafJSON(serial: state.serial, index: state.index),
                         delay: requested == state.index ? .milliseconds(200) : .zero)
        case .truncatedJSON:
            let body = leafJSON(serial: "ff:ff", index: state.index + 1)
            return .init(headers: [("X-Consul-Index", "\(state.index + 1)")], body: String(body.prefix(body.count / 2)))
        case .wrongTypes:
            return .init(headers: [("X-Consul-Index", "\(state.index + 1)")],
                         body: leafJSON(serial: "ff:ff", index: state.index + 1).replacingOccurrences(of: "\"ff:ff\"", with: "5"))
        case .serverError:
            return .init(status: .internalServerError, body: "rpc error making call: leader unavailable")
        case .forbidden:
            return .init(status: .forbidden, body: "ACL not found")
        }
    }

    /// A leaf watch running against a scripted agent that plays `state`.
    struct LeafWatch {
        let server: ScriptedHTTPServer
        let client: ConsulClient
        let task: Task<Void, Never>
        let serials: NIOLockedValueBox<[String]>

        /// The serials the watch handed on, in order.
        var delivered: [String] { serials.withLockedValue { $0 } }

        static func start(state: NIOLockedValueBox<AgentState>, token: String?, timing: WatchTiming, logger: Logger,
                          metrics: SidecarMetrics?) async throws -> LeafWatch {
            let server = try await ScriptedHTTPServer(group: testGroup) { _, uri in
                ConsulWatchTests.reply(state.withLockedValue { $0 }, uri: uri)
            }
            let client = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: server.port),
                                                                             token: token),
                                          eventLoopGroup: testGroup)
            let watch = BlockingWatch(name: "leaf", path: "/v1/agent/connect/ca/leaf/storage", client: client, timing: timing,
                                      logger: logger, metrics: metrics) { response in
                try ConsulLeafCertificate.decode(response.body, source: "leaf")
            }
            let serials = NIOLockedValueBox<[String]>([])
            let task = Task { await watch.run { leaf in serials.withLockedValue { $0.append(leaf.serialNumber) } } }
            return LeafWatch(server: server, client: client, task: task, serials: serials)
        }

        func stop() async {
            task.cancel()
            await client.shutdown()
            await server.stop()
        }
    }

    @Test("An agent whose index moves on every answer does not make the watch spin: requests are spaced by minInterval")
    func rateLimited() async throws {
        let answered = NIOLockedValueBox(0)
        let server = try await ScriptedHTTPServer(group: testGroup) { _, _ in
            let index = answered.withLockedValue { value -> Int in
                value += 1
                return value
            }
            return .init(headers: [("X-Consul-Index", "\(index)")], body: ConsulWatchTests.leafJSON(serial: "aa:\(index)", index: index))
        }
        try await withTeardown({ await server.stop() }) {
            let client = try ConsulClient(settings: ConsulConnectionSettings(transport: .tcp(host: "127.0.0.1", port: server.port)),
                                          eventLoopGroup: testGroup)
            await withTeardown({ await client.shutdown() }) {
                var timing = WatchTiming()
                timing.minInterval = .milliseconds(200)
                let watch = BlockingWatch(name: "leaf", path: "/v1/agent/connect/ca/leaf/storage", client: client, timing: timing,
                                          logger: quietLogger, metrics: nil) { try ConsulLeafCertificate.decode($0.body, source: "leaf") }
                let delivered = NIOLockedValueBox(0)
                let started = ContinuousClock.now
                let task = Task { await watch.run { _ in delivered.withLockedValue { $0 += 1 } } }
                #expect(await eventually(timeout: 30) { delivered.withLockedValue { $0 } >= 4 }, "every change is still delivered")
                task.cancel()
                let elapsed = ContinuousClock.now - started
                let requests = answered.withLockedValue { $0 }
                // Spaced by 200 ms: at most one request per 200 ms of the elapsed time (plus the first).
                let allowed = Int(elapsed / .milliseconds(200)) + 2
                #expect(requests <= allowed, "\(requests) requests in \(elapsed)")
            }
        }
    }

    @Test("Truncated JSON, wrong types, HTTP 500 and 403: last good value kept, each logged and counted; the next good answer applies")
    func faultsKeepLastGoodState() async throws {
        let state = NIOLockedValueBox(AgentState())
        let metrics = SidecarMetrics()
        let logs = RecordingLogHandler()
        var timing = WatchTiming()
        timing.wait = .seconds(1)
        timing.retryBase = 0.05
        timing.retryCap = 0.2
        let watch = try await LeafWatch.start(state: state, token: "test-token", timing: timing, logger: logs.logger, metrics: metrics)
        await withTeardown({ await watch.stop() }) {
            let server = watch.server
            #expect(await eventually { watch.delivered == ["aa:01"] })
            for fault in Fault.allCases {
                state.withLockedValue { $0.fault = fault }
                let counted = await eventually {
                    metrics.exposition().contains("backup_sidecar_consul_watch_errors_total{watch=\"leaf\",reason=\"\(fault.reason)\"}")
                }
                #expect(counted, "\(fault) counted as \(fault.reason)")
                #expect(watch.delivered == ["aa:01"], "\(fault) must not replace the last good leaf")
            }
            // The count moves just before the line is logged: await the lines too.
            #expect(await eventually { logs.messages.contains { $0.contains("Consul watch failed") && $0.contains("HTTP 403") && $0.contains("ACL not found") } })
            #expect(await eventually { logs.messages.contains { $0.contains("Consul watch failed") && $0.contains("HTTP 500") } })
            #expect(await eventually { logs.messages.contains { $0.contains("Consul watch failed") && $0.contains("unusable answer") } })

            state.withLockedValue { $0 = AgentState(fault: nil, serial: "aa:02", index: 9) }
            #expect(await eventually { watch.delivered == ["aa:01", "aa:02"] })
            #expect(await eventually { logs.messages.contains { $0.contains("Consul watch recovered") } })
            #expect(metrics.exposition().contains("backup_sidecar_consul_watch_last_success_timestamp_seconds{watch=\"leaf\"}"))
            #expect(server.requests.allSatisfy { $0.hasSuffix("token=test-token") }, "the ACL token goes with every call")
            #expect(server.requests.contains { $0.contains("index=5") && $0.contains("wait=1s") }, "blocking query parameters sent")
            #expect(!logs.messages.contains { $0.contains("test-token") }, "the token never reaches the logs")
        }
    }

    @Test("An index that goes backwards resets to a non-blocking read, and the new state applies")
    func indexReset() async throws {
        let state = NIOLockedValueBox(AgentState(serial: "bb:01", index: 100))
        var timing = WatchTiming()
        timing.wait = .seconds(1)
        let watch = try await LeafWatch.start(state: state, token: nil, timing: timing, logger: quietLogger, metrics: nil)
        try await withTeardown({ await watch.stop() }) {
            let server = watch.server
            #expect(await eventually { watch.delivered == ["bb:01"] })
            // A snapshot restore: the agent's index drops to 3 with new content.
            state.withLockedValue { $0 = AgentState(serial: "bb:02", index: 3) }
            #expect(await eventually { watch.delivered == ["bb:01", "bb:02"] })
            #expect(await eventually { server.requests.filter { !$0.contains("index=") }.count == 2 },
                    "the first read and the one after the reset do not block")
            try await Task.sleep(for: .milliseconds(300))
            #expect(server.requests.filter { !$0.contains("index=") }.count == 2, "every other read blocks")
            #expect(watch.delivered == ["bb:01", "bb:02"], "the re-read after the reset is not delivered twice")
        }
    }
}
