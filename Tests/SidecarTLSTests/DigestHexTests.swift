import Foundation
import Testing
import SidecarModel
@testable import SidecarTLS

/// The audit chain's digest text: OpenSSL's SHA-256 written as lowercase hex by hand. The
/// reference for the hex is Foundation's printf formatting; for the digest, published vectors.
@Suite struct DigestHexTests {
    @Test("every byte value, in every position, reads as printf's %02x would write it")
    func everyByte() {
        let all = (0...255).map(UInt8.init)
        #expect(lowercaseHex(all) == all.map { String(format: "%02x", $0) }.joined())
        #expect(lowercaseHex([UInt8]()) == "")
        #expect(lowercaseHex(all[250...]) == "fafbfcfdfeff")
        #expect(lowercaseHex(CollectionOfOne(0x0a)) == "0a")
    }

    @Test("random lengths and contents agree with printf")
    func random() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<200 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(lowercaseHex(bytes) == bytes.map { String(format: "%02x", $0) }.joined(), "\(bytes)")
        }
    }

    @Test("SHA-256 test vectors (FIPS 180-2)", arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    ])
    func vectors(input: String, expected: String) {
        let digest = SHA256Digest()
        digest.update(Array(input.utf8))
        #expect(digest.finalizeHex() == expected)
    }
}
