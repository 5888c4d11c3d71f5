import FuzzSupport
import NIOCore
import SidecarCore
#if canImport(Glibc)
import Glibc
#endif

/// PROXY protocol v2 headers built from fuzzed addresses, ports, TLS version and SPIFFE ID,
/// read back by the small independent decoder below. Input: a family selector, 16+16 address
/// bytes, two ports, a repeat count, then TLS version NUL SPIFFE ID.
@_cdecl("LLVMFuzzerTestOneInput")
func proxyProtocolFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let selector = input.byte()
    let sourceBytes = input.bytes(16), destinationBytes = input.bytes(16)
    let sourcePort = UInt16(input.byte()) << 8 | UInt16(input.byte())
    let destinationPort = UInt16(input.byte()) << 8 | UInt16(input.byte())
    let repeats = Int(input.byte() % 64) + 1 // reaches the 2048-byte SPIFFE cap with short inputs
    let tlsVersion = input.field()
    let spiffeID = String(repeating: input.field(), count: repeats)

    let v4 = (address(v4: sourceBytes, port: sourcePort), address(v4: destinationBytes, port: destinationPort))
    let v6 = (address(v6: sourceBytes, port: sourcePort), address(v6: destinationBytes, port: destinationPort))
    let unix = try? SocketAddress(unixDomainSocketPath: "/tmp/fuzz.sock")
    let (source, destination, family): (SocketAddress?, SocketAddress?, UInt8)
    switch selector % 6 {
    case 0: (source, destination, family) = (v4.0, v4.1, 0x11)
    case 1: (source, destination, family) = (v6.0, v6.1, 0x21)
    case 2: (source, destination, family) = (v4.0, v6.1, 0x00)
    case 3: (source, destination, family) = (nil, v4.1, 0x00)
    case 4: (source, destination, family) = (unix, unix, 0x00)
    default: (source, destination, family) = (v6.0, nil, 0x00)
    }

    let header = ProxyProtocolV2.header(source: source, destination: destination, spiffeID: spiffeID, tlsVersion: tlsVersion)
    guard let decoded = DecodedHeader(header) else {
        invariant(false, "undecodable header \(header)")
        return 0
    }
    invariant(decoded.family == family, "family \(decoded.family), expected \(family)")
    let width = family == 0x11 ? 4 : 16
    let expectedAddresses = family == 0x00 ? [] : Array(sourceBytes.prefix(width)) + Array(destinationBytes.prefix(width))
        + bigEndian(sourcePort) + bigEndian(destinationPort)
    invariant(decoded.addresses == expectedAddresses, "address block \(decoded.addresses), expected \(expectedAddresses)")
    invariant(decoded.tlvs.map(\.type) == [0x20, 0xE0], "TLV types \(decoded.tlvs.map(\.type))")
    invariant(decoded.tlvs[1].value == Array(spiffeID.utf8.prefix(2048)), "SPIFFE TLV does not round-trip")
    if spiffeID.utf8.count <= 2048 {
        invariant(String(decoding: decoded.tlvs[1].value, as: UTF8.self) == spiffeID, "SPIFFE ID changed")
    }
    // SSL TLV: client flags SSL|CERT_CONN|CERT_SESS, verify 0, then exactly the version sub-TLV.
    let ssl = decoded.tlvs[0].value
    invariant(ssl.prefix(5).elementsEqual([0x07, 0, 0, 0, 0]), "SSL flags/verify \(ssl.prefix(5))")
    let subTLVs = DecodedHeader.tlvs(ssl.dropFirst(5))
    invariant(subTLVs?.count == 1 && subTLVs?[0].type == 0x21, "SSL sub-TLVs \(String(describing: subTLVs))")
    invariant(subTLVs?[0].value == Array(tlsVersion.utf8.prefix(255)), "TLS version does not round-trip")
    return 0
}

private func address(v4 bytes: [UInt8], port: UInt16) -> SocketAddress {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    withUnsafeMutableBytes(of: &address.sin_addr) { $0.copyBytes(from: bytes.prefix(4)) }
    return SocketAddress(address, host: "")
}

private func address(v6 bytes: [UInt8], port: UInt16) -> SocketAddress {
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    address.sin6_port = port.bigEndian
    withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: bytes.prefix(16)) }
    return SocketAddress(address, host: "")
}

private func bigEndian(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }

/// A strict reader of what the encoder may produce: signature, version 2 PROXY, a length that
/// covers exactly the rest, an address block sized by the family, TLVs filling the remainder.
struct DecodedHeader {
    var family: UInt8
    var addresses: [UInt8]
    var tlvs: [(type: UInt8, value: [UInt8])]

    init?(_ header: [UInt8]) {
        guard header.count >= 16, Array(header.prefix(12)) == ProxyProtocolV2.signature, header[12] == 0x21 else { return nil }
        let length = Int(header[14]) << 8 | Int(header[15])
        guard header.count - 16 == length else { return nil }
        family = header[13]
        let addressLength: Int
        switch family {
        case 0x00: addressLength = 0
        case 0x11: addressLength = 12
        case 0x21: addressLength = 36
        default: return nil
        }
        guard length >= addressLength, let tlvs = Self.tlvs(header[(16 + addressLength)...]) else { return nil }
        addresses = Array(header[16..<(16 + addressLength)])
        self.tlvs = tlvs
    }

    /// Type, 16-bit length, value, back to back to the last byte; nil if anything is left over.
    static func tlvs(_ bytes: ArraySlice<UInt8>) -> [(type: UInt8, value: [UInt8])]? {
        var rest = bytes, result: [(type: UInt8, value: [UInt8])] = []
        while !rest.isEmpty {
            guard rest.count >= 3 else { return nil }
            let start = rest.startIndex
            let length = Int(rest[start + 1]) << 8 | Int(rest[start + 2])
            guard rest.count >= 3 + length else { return nil }
            result.append((rest[start], Array(rest[(start + 3)..<(start + 3 + length)])))
            rest = rest.dropFirst(3 + length)
        }
        return result
    }
}

@main enum ProxyProtocolFuzzMain {
    static func main() { FuzzDriver.main(proxyProtocolFuzz) }
}
