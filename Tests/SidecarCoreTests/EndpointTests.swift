import Foundation
import NIOConcurrencyHelpers
import Testing
import TestFixtures
@testable import SidecarCore

@Suite("Endpoint")
struct EndpointTests {
    @Test("parses HOST:PORT and [v6]:PORT", arguments: [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("localhost:1", "localhost", 1),
        ("storage.service.consul:65535", "storage.service.consul", 65535),
        ("10.0.0.7:21000", "10.0.0.7", 21000),
        ("[::1]:443", "::1", 443),
        ("[2001:db8::10]:21000", "2001:db8::10", 21000),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
    ])
    func parses(text: String, host: String, port: Int) throws {
        let endpoint = try #require(Endpoint(parsing: text))
        #expect(endpoint == Endpoint(host: host, port: port))
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
    }

    @Test("refuses malformed endpoints", arguments: [
        "",
        "localhost",
        "localhost:",
        ":8080",
        ":",
        "[]:80",
        "[::1]",
        "::1]",
        "host:0",
        "host:65536",
        "host:99999999999999999999",
        "host:-1",
        "host:abc",
        "host:80a",
        "host: 80",
        "host:80 ",
        "host:0x50",
    ])
    func refuses(text: String) {
        #expect(Endpoint(parsing: text) == nil)
    }

    @Test("refuses unbalanced IPv6 brackets", arguments: [
        "[::1:80",
        "::1]:80",
        "[::1]]:80",
        "host]:80",
        "[host:80",
    ])
    func refusesUnbalancedBrackets(text: String) {
        // Neither "HOST:PORT" nor "[v6]:PORT": the bracket would end up in the host name.
        #expect(Endpoint(parsing: text) == nil, "parsed as \(String(describing: Endpoint(parsing: text)))")
    }

    @Test("description brackets IPv6 hosts and parses back", arguments: [
        (Endpoint(host: "127.0.0.1", port: 80), "127.0.0.1:80"),
        (Endpoint(host: "storage.service.consul", port: 21000), "storage.service.consul:21000"),
        (Endpoint(host: "::1", port: 443), "[::1]:443"),
        (Endpoint(host: "2001:db8::10", port: 1), "[2001:db8::10]:1"),
    ])
    func description(endpoint: Endpoint, text: String) {
        #expect(endpoint.description == text)
        #expect(Endpoint(parsing: endpoint.description) == endpoint)
    }
}

@Suite("EndpointRotation")
struct EndpointRotationTests {
    static let a = Endpoint(host: "10.0.0.1", port: 21000)
    static let b = Endpoint(host: "10.0.0.2", port: 21000)
    static let c = Endpoint(host: "10.0.0.3", port: 21000)

    @Test("round-robin start, full list every time")
    func roundRobin() {
        let rotation = EndpointRotation([Self.a, Self.b, Self.c])
        #expect(rotation.attemptOrder() == [Self.a, Self.b, Self.c])
        #expect(rotation.attemptOrder() == [Self.b, Self.c, Self.a])
        #expect(rotation.attemptOrder() == [Self.c, Self.a, Self.b])
        #expect(rotation.attemptOrder() == [Self.a, Self.b, Self.c])
        for _ in 0..<10 {
            #expect(Set(rotation.attemptOrder()) == [Self.a, Self.b, Self.c])
        }
    }

    @Test("one endpoint is always first")
    func single() {
        let rotation = EndpointRotation([Self.a])
        for _ in 0..<5 { #expect(rotation.attemptOrder() == [Self.a]) }
    }

    @Test("no endpoints gives an empty order, repeatedly")
    func empty() {
        let rotation = EndpointRotation([])
        for _ in 0..<3 { #expect(rotation.attemptOrder().isEmpty) }
        // Empty calls do not disturb the rotation once endpoints arrive.
        rotation.replace([Self.a, Self.b])
        #expect(rotation.attemptOrder() == [Self.a, Self.b])
        #expect(rotation.attemptOrder() == [Self.b, Self.a])
    }

    @Test("replace keeps rotating over the new list")
    func replace() {
        let rotation = EndpointRotation([Self.a, Self.b, Self.c])
        _ = rotation.attemptOrder()
        _ = rotation.attemptOrder()
        rotation.replace([Self.b, Self.c])
        let first = rotation.attemptOrder()
        let second = rotation.attemptOrder()
        #expect(Set(first) == [Self.b, Self.c] && first.count == 2)
        #expect(Set(second) == [Self.b, Self.c] && second.count == 2)
        #expect(first.first != second.first)
        rotation.replace([])
        #expect(rotation.attemptOrder().isEmpty)
    }

    @Test("starts are spread evenly under concurrent use")
    func concurrent() {
        let endpoints = [Self.a, Self.b, Self.c]
        let rotation = EndpointRotation(endpoints)
        let firsts = NIOLockedValueBox<[Endpoint: Int]>([:])
        DispatchQueue.concurrentPerform(iterations: 300) { _ in
            let order = rotation.attemptOrder()
            firsts.withLockedValue { $0[order[0], default: 0] += 1 }
        }
        #expect(firsts.withLockedValue { $0 } == [Self.a: 100, Self.b: 100, Self.c: 100])
    }
}
