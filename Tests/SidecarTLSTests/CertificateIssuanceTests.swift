import Foundation
import Testing
@testable import SidecarTLS

@Suite("Certificate issuance: serial numbers")
struct CertificateIssuanceTests {
    static let key = try! PrivateKey.generate(.ecP256)

    static func issue(serial: [UInt8]) throws -> Certificate {
        let now = Date()
        let template = CertificateTemplate(kind: .certificateAuthority, serial: serial, subject: .commonName("Serial test CA"),
                                           notBefore: now, notAfter: now + 3600, uriSAN: "spiffe://serial.consul")
        return try Certificate.issue(template, subjectKey: key, issuer: nil)
    }

    // The top bit set in the first byte is an unsigned magnitude, not a negative number
    // (a random 64-bit serial has it half the time once leading zeros are dropped).
    @Test("Any non-zero magnitude up to 20 bytes survives a PEM round trip unchanged", arguments: [
        [0x01], [0x7f], [0x80], [0xff], [0x80, 0x00, 0x01], [0x00, 0x00, 0x9a], [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0],
        [UInt8](repeating: 0xff, count: 20), [0x00] + [UInt8](repeating: 0x80, count: 20),
    ] as [[UInt8]])
    func serialRoundTrip(serial: [UInt8]) throws {
        let certificate = try Self.issue(serial: serial)
        let reparsed = try Certificate.parsePEMBundle(Array(certificate.pemEncoded.utf8), source: "test")
        #expect(reparsed.first?.serialBytes == Array(serial.drop { $0 == 0 }))
    }

    @Test("Zero, empty and longer than 20 bytes are refused", arguments: [
        [], [0x00], [0x00, 0x00], [UInt8](repeating: 0x01, count: 21),
    ] as [[UInt8]])
    func serialRefused(serial: [UInt8]) {
        #expect(throws: TLSMaterialError.self) { _ = try Self.issue(serial: serial) }
    }
}
