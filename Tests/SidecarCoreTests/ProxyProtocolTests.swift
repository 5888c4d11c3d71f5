import Foundation
import NIOCore
import Testing
import TestFixtures
@testable import SidecarCore
@testable import SidecarTLS
import TestSupport
@testable import SidecarModel

@Suite("PROXY protocol v2")
struct ProxyProtocolTests {
    @Test("Header bytes: signature, version/command, IPv4 addresses and ports, SSL and SPIFFE TLVs")
    func ipv4Header() throws {
        let header = ProxyProtocolV2.header(source: try SocketAddress(ipAddress: "10.1.2.3", port: 40000),
                                            destination: try SocketAddress(ipAddress: "127.0.0.1", port: 21000),
                                            spiffeID: "spiffe://td/ns/default/dc/dc1/svc/backup-agent", tlsVersion: "TLSv1.3")
        #expect(Array(header.prefix(12)) == ProxyProtocolV2.signature)
        #expect(header[12] == 0x21)
        #expect(header[13] == 0x11)
        let length = Int(header[14]) << 8 | Int(header[15])
        #expect(header.count == 16 + length)
        #expect(Array(header[16..<20]) == [10, 1, 2, 3])
        #expect(Array(header[20..<24]) == [127, 0, 0, 1])
        #expect(Array(header[24..<28]) == [0x9C, 0x40, 0x52, 0x08])
        // SSL TLV: type, length 15, flags 7, verify 0, version sub-TLV.
        #expect(Array(header[28..<31]) == [0x20, 0x00, 0x0F])
        #expect(Array(header[31..<36]) == [0x07, 0, 0, 0, 0])
        #expect(Array(header[36..<39]) == [0x21, 0x00, 0x07])
        #expect(String(decoding: header[39..<46], as: UTF8.self) == "TLSv1.3")
        let spiffe = "spiffe://td/ns/default/dc/dc1/svc/backup-agent"
        #expect(Array(header[46..<49]) == [0xE0, 0x00, UInt8(spiffe.utf8.count)])
        #expect(String(decoding: header[49...], as: UTF8.self) == spiffe)
    }

    @Test("IPv6 addresses use family 0x21; mixed families omit the address block")
    func otherFamilies() throws {
        let v6 = ProxyProtocolV2.header(source: try SocketAddress(ipAddress: "::1", port: 1), destination: try SocketAddress(ipAddress: "::1", port: 2),
                                        spiffeID: "x", tlsVersion: "TLSv1.3")
        #expect(v6[13] == 0x21)
        #expect(v6[16 + 15] == 1 && v6[16 + 31] == 1, "loopback in both address fields")
        let mixed = ProxyProtocolV2.header(source: try SocketAddress(ipAddress: "::1", port: 1),
                                           destination: try SocketAddress(ipAddress: "127.0.0.1", port: 2), spiffeID: "x", tlsVersion: "v")
        #expect(mixed[13] == 0x00)
        #expect(mixed[16] == 0x20, "TLVs start right after the fixed header")
    }

    @Test("A local app behind the sidecar reads the peer address and SPIFFE ID from the header")
    func endToEnd() async throws {
        let mesh = try await MeshFixture.start(backend: .proxyProtocolEcho, storageConfig: { $0.proxyProtocol = true })
        try await withTeardown({ await mesh.stop() }) {
            let socket = try BlockingSocket(port: mesh.upstreamPort)
            socket.setReceiveTimeout(seconds: 30)
            socket.send(Array("payload after the header\n".utf8))
            socket.shutdownWrite()
            let reply = await onThread { socket.receiveAll(keepingPrefix: 4096) }
            let text = String(decoding: reply.prefix, as: UTF8.self)
            let agentID = "spiffe://\(TestCertificates.trustDomain)/ns/default/dc/dc1/svc/backup-agent"
            #expect(text.hasPrefix("src=127.0.0.1:"), "\(text)")
            #expect(text.contains(" spiffe=\(agentID)"), "\(text)")
            #expect(text.contains(" tls=TLSv1.3"), "\(text)")
            #expect(text.hasSuffix("\npayload after the header\n"), "\(text)")
        }
    }

    @Test("proxy_protocol accepts only v2")
    func config() throws {
        func decode(_ value: String) throws -> ProxyDefinition {
            try ProxyDefinition.decode(Data("""
                {"service": {"kind": "connect-proxy", "name": "p", "port": 21000,
                  "proxy": {"destination_service_name": "storage", "local_service_port": 8080, "config": {"proxy_protocol": "\(value)"}}}}
                """.utf8), source: "svc.json")
        }
        #expect(try decode("v2").config.proxyProtocol)
        #expect(throws: ConfigError.self) { try decode("v1") }
    }
}
