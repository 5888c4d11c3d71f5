import NIOCore

/// PROXY protocol v2 header sent to the local service before any byte of an inbound
/// connection (proxy config `"proxy_protocol": "v2"`), so the app can log and authorize by the
/// real peer: its address, that it came over verified TLS, and its SPIFFE ID.
///
/// TLVs: PP2_TYPE_SSL (0x20) with client flags SSL|CERT_CONN|CERT_SESS, verify 0 (success) and
/// PP2_SUBTYPE_SSL_VERSION; and a custom TLV 0xE0 (the spec's custom range) holding the client's
/// SPIFFE ID as UTF-8. `package` so the PROXY protocol fuzz target can check it.
package enum ProxyProtocolV2 {
    package static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let spiffeIDType: UInt8 = 0xE0
    static let sslType: UInt8 = 0x20
    static let sslVersionSubtype: UInt8 = 0x21

    /// The header for a connection from `source` to `destination` (our public listener). When
    /// the two are not both IPv4 or both IPv6, the address block is omitted (AF_UNSPEC).
    package static func header(source: SocketAddress?, destination: SocketAddress?, spiffeID: String, tlsVersion: String) -> [UInt8] {
        var body: [UInt8] = []
        var family: UInt8 = 0x00
        switch (source, destination) {
        case (.v4(let src)?, .v4(let dst)?):
            family = 0x11 // TCP over IPv4
            body += withUnsafeBytes(of: src.address.sin_addr.s_addr) { Array($0) }
            body += withUnsafeBytes(of: dst.address.sin_addr.s_addr) { Array($0) }
            body += bigEndian(UInt16(source!.port!)) + bigEndian(UInt16(destination!.port!))
        case (.v6(let src)?, .v6(let dst)?):
            family = 0x21 // TCP over IPv6
            body += withUnsafeBytes(of: src.address.sin6_addr) { Array($0) }
            body += withUnsafeBytes(of: dst.address.sin6_addr) { Array($0) }
            body += bigEndian(UInt16(source!.port!)) + bigEndian(UInt16(destination!.port!))
        default:
            break
        }
        let version = Array(tlsVersion.utf8.prefix(255))
        let sslValue: [UInt8] = [0x07] + [0, 0, 0, 0] + tlv(sslVersionSubtype, version)
        body += tlv(sslType, sslValue)
        body += tlv(spiffeIDType, Array(spiffeID.utf8.prefix(2048)))
        return signature + [0x21, family] + bigEndian(UInt16(body.count)) + body
    }

    private static func tlv(_ type: UInt8, _ value: [UInt8]) -> [UInt8] {
        [type] + bigEndian(UInt16(value.count)) + value
    }

    private static func bigEndian(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
}

/// First bytes on the local connection: the PROXY v2 header, written from the front of the
/// pipeline so it precedes (and bypasses) any HTTP encoder installed after it.
final class ProxyProtocolHeaderHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let header: [UInt8]

    init(header: [UInt8]) { self.header = header }

    func handlerAdded(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: header)), promise: nil)
    }
}
