import Foundation
import TestSupport
@testable import SidecarCore

/// Hostile HTTP/1.1 request streams for the differential smuggling test: the tricks of the
/// published desync and path-confusion CVEs (Envoy, HAProxy, nginx, Consul) and of
/// PortSwigger's desync research, by family, plus generated combinations. Each stream is sent
/// on a connection of its own through the backup agent's upstream listener.
package struct HostileRequest: Sendable, CustomStringConvertible {
    package let family: String
    package let label: String
    package let bytes: [UInt8]

    package var description: String { "\(family)/\(label)" }
}

package enum HTTP1Corpus {
    /// The policy the corpus is sent against (source backup-agent, destination storage), after
    /// Consul's own request-normalization integration test plus the repository's backup rules.
    package static let intentionsJSON = """
        [{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Permissions": [
          {"Action": "deny", "HTTP": {"PathPrefix": "/admin/"}},
          {"Action": "deny", "HTTP": {"PathExact": "/value/supersecret"}},
          {"Action": "deny", "HTTP": {"Header": [{"Name": "x-check", "Exact": "bad"}]}},
          {"Action": "deny", "HTTP": {"Header": [{"Name": ":authority", "Suffix": "bad.com"}]}},
          {"Action": "allow", "HTTP": {"PathPrefix": "/repository/", "Methods": ["GET", "HEAD", "PUT", "POST"]}},
          {"Action": "allow", "HTTP": {"PathPrefix": "/value/", "Methods": ["GET", "HEAD"]}}
        ]}]}]
        """

    /// What no request the service receives may ever be, whatever the bytes: the deny rules.
    package static func violatesPolicy(method: String, target: String, headers: [[String]]) -> String? {
        let path = String(target.prefix { $0 != "?" })
        if path.hasPrefix("/admin/") { return "path under /admin/" }
        if path == "/value/supersecret" { return "/value/supersecret" }
        if !["GET", "HEAD", "PUT", "POST"].contains(method) { return "method \(method)" }
        if method != "GET" && method != "HEAD" && !path.hasPrefix("/repository/") { return "\(method) outside /repository/" }
        for header in headers where header.count == 2 {
            if header[0].lowercased() == "x-check" && header[1] == "bad" { return "x-check: bad" }
            if header[0].lowercased() == "host" && header[1].hasSuffix("bad.com") { return "host \(header[1])" }
        }
        return nil
    }

    package static let pre = "POST /repository/a HTTP/1.1\r\nHost: storage\r\n"
    package static let chunked5 = "5\r\nhello\r\n0\r\n\r\n"
    /// 45 bytes (0x2d): a request the policy denies.
    package static let smuggled = "GET /admin/secret HTTP/1.1\r\nHost: storage\r\n\r\n"
    package static let follow = "GET /repository/follow HTTP/1.1\r\nHost: storage\r\n\r\n"

    package static func te(_ line: String) -> String { pre + line + "\r\n" + chunked5 + follow }
    /// A CL-only reader sees one request with a 50-byte body, a TE reader a second request.
    package static func clte(_ line: String) -> String { pre + line + "Content-Length: 50\r\n\r\n0\r\n\r\n" + smuggled }
    /// A CL reader takes "2d\r\n" as the body and the smuggled request as the next one.
    package static func tecl(_ line: String) -> String { pre + line + "Content-Length: 4\r\n\r\n2d\r\n" + smuggled + "\r\n0\r\n\r\n" }
    package static func cl(_ value: String) -> String { pre + "Content-Length:" + value + "\r\n\r\nhello" + follow }
    package static func header(_ line: String) -> String { "GET /repository/a HTTP/1.1\r\nHost: storage\r\n" + line + "\r\n" + follow }
    package static func chunkedBody(_ body: String) -> String { pre + "Transfer-Encoding: chunked\r\n\r\n" + body + follow }
    package static func path(_ target: String, method: String = "GET") -> String { "\(method) \(target) HTTP/1.1\r\nHost: storage\r\n\r\n" }

    package static let transferEncodings = [
        "Transfer-Encoding: chunked", "Transfer-Encoding: Chunked", "Transfer-Encoding: CHUNKED", "transfer-encoding: chunked",
        "TRANSFER-ENCODING: chunked", "Transfer-Encoding:chunked", "Transfer-Encoding: chunked ", "Transfer-Encoding:\tchunked",
        "Transfer-Encoding: chunked\t", "Transfer-Encoding: \u{0B}chunked", "Transfer-Encoding: \u{0C}chunked",
        "Transfer-Encoding: chunked\u{00}", "Transfer-Encoding: chunked, identity", "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: gzip, chunked", "Transfer-Encoding: chunked, chunked", "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunkedx", "Transfer-Encoding: \"chunked\"", "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked", "Transfer-Encoding:\r\n chunked", "Transfer-Encoding : chunked",
        "Transfer_Encoding: chunked", "Transfer-Encoding\t: chunked", "X-Pad: 1\r\n Transfer-Encoding: chunked",
        "X-Pad: 1\r\n\tTransfer-Encoding: chunked", "Transfer-Encoding: ch\runked", "Transfer-Encoding: chunk\u{E9}d",
        "Transfer-Encoding: \u{2009}chunked", "Transfer-Encoding: identity", "Transfer-Encoding:", "Transfer-Encoding: ,chunked",
    ].map { $0 + "\r\n" }

    package static let contentLengths = [
        " 5", "5", " 05", " 00005", " +5", " -5", " 5 5", " 5,5", " 5, 5", " 0x5", " 5\t", "", " ", " 18446744073709551621",
        " 4294967301", " 99999999999999999999", " \u{FF15}", " 5\r\nContent-Length: 5", " 5\r\nContent-Length: 6",
        " 6\r\nContent-Length: 5", " 1e1", " 5.0", " 5\u{00}",
    ]

    package static let chunkedBodies = [
        "0x5\r\nhello\r\n0\r\n\r\n", "5;ext\r\nhello\r\n0\r\n\r\n", "5;a=\"b c\"\r\nhello\r\n0\r\n\r\n", "5\nhello\n0\n\n",
        "5\r\nhello\n0\r\n\r\n", "ffffffffffffffff5\r\nhello\r\n0\r\n\r\n", "100000000000000005\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n", "5\r\nhello0\r\n\r\n", "5 \r\nhello\r\n0\r\n\r\n", " 5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nContent-Length: 45\r\n\r\n", "5\r\nhello\r\n0\r\nX: y\r\nGET /admin/secret HTTP/1.1\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n00\r\n\r\n", "A\r\n0123456789\r\n0;x=y\r\n\r\n",
        "5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n", "5\r\nhello\r\n0\r\n\r\r\n", "5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "2d\r\n\(smuggled)\r\n0\r\n\r\n", "5\r\nhe", "5;\u{00}\r\nhello\r\n0\r\n\r\n",
    ]

    package static let headerLines = [
        ": x", "\u{00}X: y", "X\u{00}: y", "X: a\u{00}b", "X: a\rb", "X: a\u{0B}b", "X@Y: z", "X Y: z", "x-check : bad",
        "x_check: bad", "X-Check: bad", "X-Check: BAD", "x-check: bad ", "x-check:\tbad", "X-Check: good\r\nX-Check: bad",
        "X-Check: good\r\n x: bad", String(repeating: "X", count: 270) + ": y", "X:", "Connection: close, X-Check",
        "Connection: keep-alive", "X: \u{FF}", "X: caf\u{E9}", "Expect: 100-continue", "Expect: foo",
    ]

    package static let requestLines = [
        "GET  /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n", "GET /repository/a  HTTP/1.1\r\nHost: storage\r\n\r\n",
        "GET\t/repository/a HTTP/1.1\r\nHost: storage\r\n\r\n", "GET /repository/a HTTP/1.1 \r\nHost: storage\r\n\r\n",
        "GET /repository/a\r\n\r\n", "GET /repository/a HTTP/1.2\r\nHost: storage\r\n\r\n",
        "GET /repository/a http/1.1\r\nHost: storage\r\n\r\n", "GET /repository/a HTTP/1.10\r\nHost: storage\r\n\r\n",
        "get /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n", "GET http://storage/admin/secret HTTP/1.1\r\nHost: storage\r\n\r\n",
        "DELETE http://storage/repository/x HTTP/1.1\r\nHost: storage\r\n\r\n",
        "GET http://storage/repository/a HTTP/1.1\r\nHost: storage\r\n\r\n", "GET HTTP://storage/repository/a HTTP/1.1\r\nHost: storage\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: storage\r\n\r\n", "CONNECT storage:443 HTTP/1.1\r\nHost: storage\r\n\r\n",
        "GET /repository/a HTTP/1.1\nHost: storage\n\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "G\u{00}ET /repository/a HTTP/1.1\r\n\r\n",
        "GET /repository/a?x HTTP/1.1\r\nHost: storage\r\n\r\n", "DELETE /repository/snap HTTP/1.1\r\nHost: storage\r\n\r\n",
        "\r\nGET /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n", "\nGET /repository/a HTTP/1.1\r\nHost: storage\r\n\r\n",
        "GET /repository/a HTTP/1.0\r\n\r\n", "POST /repository/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked5,
        "TRACE /repository/a HTTP/1.1\r\nHost: storage\r\nContent-Length: 5\r\n\r\nhello",
        "GET /repository/a HTTP/1.1\r\nHost: storage\r\n", "GET /repository/a HTT",
    ]

    package static let targets = [
        "/repository/../admin/secret", "/repository/%2e%2e/admin/secret", "/repository/%2E%2E/admin/secret",
        "/repository/.%2e/admin/secret", "/./admin/secret", "/admin/./secret", "/%61dmin/secret", "/repository%2F..%2Fadmin/secret",
        "/repository/..%2Fadmin/secret", "/repository/..%5Cadmin/secret", "/repository\\..\\admin/secret", "/repository/..;/admin/secret",
        "/admin/secret#x", "/repository/a#/../../admin", "/repository/%252e%252e/admin", "/repository/%c0%ae%c0%ae/admin",
        "/repository/a%00", "repository/a", "//admin/secret", "/value/supersecret", "/value/%73upersecret", "/value/./supersecret",
        "/value/supersecret/", "/value/supersecret?x=1", "/value/supersecret;x", "/value//supersecret", "/Value/supersecret",
        "/repository/a?x=/../admin", "/repository/a/./b/../c", "/repository/%7Euser", "/repository/a%20b", "/repository/%2e",
        "/admin%2Fsecret", "/repository/a b", "/repository/<x>",
    ]

    package static let hosts = [
        "Host: storage\r\nHost: evil.bad.com\r\n", "Host: evil.bad.com\r\n", "Host: a@evil.bad.com\r\n", "Host: evil.bad.com:80\r\n",
        "Host: evil.BAD.com\r\n", "", "Host: storage, evil.bad.com\r\n", "Host: storage/../x\r\n",
    ]

    package static let upgrades = [
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Connection: Upgrade\r\n", "Upgrade: h2c\r\n", "HTTP2-Settings: AAMAAABk\r\n", "Upgrade: TLS/1.2\r\nConnection: Upgrade\r\n",
    ]

    package static var all: [HostileRequest] {
        var items: [HostileRequest] = []
        func add(_ family: String, _ label: String, _ text: String) {
            items.append(HostileRequest(family: family, label: label, bytes: Array(text.utf8)))
        }
        for line in transferEncodings {
            let label = line.debugDescription
            add("TE", label, te(line))
            add("CL.TE", label, clte(line))
            add("TE.CL", label, tecl(line))
        }
        for value in contentLengths { add("CL", value.debugDescription, cl(value)) }
        for body in chunkedBodies { add("CH", body.debugDescription, chunkedBody(body)) }
        for line in headerLines { add("HN", line.debugDescription, header(line + "\r\n")) }
        for line in requestLines { add("RL", line.debugDescription, line) }
        for target in targets {
            add("P", target, path(target))
            add("P-PUT", target, path(target, method: "PUT").replacingOccurrences(of: "\r\n\r\n", with: "\r\nContent-Length: 0\r\n\r\n"))
        }
        for host in hosts {
            add("HO", host.debugDescription, "GET /repository/a HTTP/1.1\r\n" + host + "\r\n")
            add("HO-abs", host.debugDescription, "GET http://evil.bad.com/repository/a HTTP/1.1\r\n" + host + "\r\n")
        }
        for upgrade in upgrades {
            add("UP", upgrade.debugDescription, "GET /repository/a HTTP/1.1\r\nHost: storage\r\n" + upgrade + "\r\n" + smuggled)
        }
        // Expect: 100-continue, allowed and denied, with and without the body sent.
        add("EX", "allowed, body sent", pre + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello" + follow)
        add("EX", "denied, body sent", "PUT /admin/x HTTP/1.1\r\nHost: storage\r\nExpect: 100-continue\r\nContent-Length: 45\r\n\r\n" + smuggled)
        add("EX", "denied, no body", "PUT /admin/x HTTP/1.1\r\nHost: storage\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        add("EX", "HTTP/1.0", "POST /repository/a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
        add("EX", "unknown", pre + "Expect: 100-continue, foo\r\nContent-Length: 5\r\n\r\nhello")
        add("EX", "case", pre + "Expect: 100-CONTINUE\r\nContent-Length: 5\r\n\r\nhello")
        // Pipelining around denied and refused requests.
        add("PL", "allowed, denied, allowed", path("/repository/a") + path("/admin/secret") + follow)
        add("PL", "denied with a CL body holding a request", "PUT /admin/x HTTP/1.1\r\nHost: storage\r\nContent-Length: 45\r\n\r\n" + smuggled + follow)
        add("PL", "denied with a chunked body holding a request",
            "PUT /admin/x HTTP/1.1\r\nHost: storage\r\nTransfer-Encoding: chunked\r\n\r\n2d\r\n" + smuggled + "\r\n0\r\n\r\n" + follow)
        add("PL", "GET with a CL body holding a request", "GET /repository/a HTTP/1.1\r\nHost: storage\r\nContent-Length: 45\r\n\r\n" + smuggled)
        add("PL", "GET with a chunked body ending early (the finding)",
            "GET /repository/ HTTP/1.1\r\nHost: storage\r\nTransfer-Encoding: Chunked\r\n\r\n"
                + chunk("0\r\n\r\nDELETE /repository/snap HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") + "0\r\n\r\n")
        add("PL", "allowed, malformed, allowed", path("/repository/a") + "GET /repository/b HTTP/1.1\r\nHost : storage\r\n\r\n" + follow)
        add("PL", "three allowed", path("/repository/1") + path("/repository/2") + path("/repository/3"))
        add("PL", "denied DELETE then GET", path("/repository/a", method: "DELETE") + follow)
        add("PL", "HTTP/1.0 then more", "GET /repository/a HTTP/1.0\r\n\r\n" + smuggled)
        add("PL", "Connection: close then more", "GET /repository/a HTTP/1.1\r\nHost: storage\r\nConnection: close\r\n\r\n" + smuggled)
        add("PL", "HEAD then GET", path("/repository/a", method: "HEAD") + follow)
        items += generated(count: 120)
        return items
    }

    package static func chunk(_ data: String) -> String { String(data.utf8.count, radix: 16) + "\r\n" + data + "\r\n" }

    /// Random combinations of method, target, framing and extra header lines (seeded: the
    /// same every run), each followed by a pipelined probe.
    package static func generated(count: Int) -> [HostileRequest] {
        var random = SplitMix64(seed: 0xb5ca_de)
        func pick<T>(_ choices: [T]) -> T { choices[Int(random.next() % UInt64(choices.count))] }
        let methods = ["GET", "HEAD", "PUT", "POST", "DELETE", "TRACE", "PATCH", "get", "MOVE"]
        let framings = ["", "Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: Chunked\r\n",
                        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "Content-Length: 5\r\nContent-Length: 5\r\n",
                        "Transfer-Encoding: chunked, gzip\r\n", "Content-Length: 05\r\n"]
        let extras = ["", "X-Check: bad\r\n", "X-Check: ok\r\n", "Connection: close\r\n", "Expect: 100-continue\r\n",
                      "Upgrade: h2c\r\n", "X_Check: bad\r\n", "Host: evil.bad.com\r\n"]
        return (0..<count).map { index in
            let method = pick(methods), target = pick(targets + ["/repository/x", "/value/y", "/admin/z"])
            let framing = pick(framings), extra = pick(extras)
            var text = "\(method) \(target) HTTP/1.1\r\nHost: storage\r\n\(extra)\(framing)\r\n"
            if framing.contains("chunked") { text += chunked5 } else if framing.contains("Content-Length") { text += "hello" }
            text += pick([follow, smuggled, ""])
            return HostileRequest(family: "GEN", label: "#\(index) \(method) \(target)", bytes: Array(text.utf8))
        }
    }
}
