/// HTTP/2 framing (RFC 9113 §4 and §6): what the L7 filter needs to read frame headers and to
/// write the few frames it originates (re-encoded request headers, denials, flow-control
/// credit, GOAWAY). No I/O: plain byte arrays.
enum HTTP2FrameType {
    static let data: UInt8 = 0x0
    static let headers: UInt8 = 0x1
    static let priority: UInt8 = 0x2
    static let rstStream: UInt8 = 0x3
    static let settings: UInt8 = 0x4
    static let pushPromise: UInt8 = 0x5
    static let ping: UInt8 = 0x6
    static let goaway: UInt8 = 0x7
    static let windowUpdate: UInt8 = 0x8
    static let continuation: UInt8 = 0x9
}

/// Frame flags. END_STREAM and ACK share a bit: which one applies depends on the frame type.
enum HTTP2Flag {
    static let endStream: UInt8 = 0x1
    static let ack: UInt8 = 0x1
    static let endHeaders: UInt8 = 0x4
    static let padded: UInt8 = 0x8
    static let priority: UInt8 = 0x20
}

/// Error codes carried by RST_STREAM and GOAWAY (RFC 9113 §7).
enum HTTP2ErrorCode: UInt32, Sendable {
    case noError = 0x0
    case protocolError = 0x1
    case internalError = 0x2
    case frameSizeError = 0x6
    case refusedStream = 0x7
    case cancel = 0x8
    case compressionError = 0x9
    case enhanceYourCalm = 0xb
}

/// The 9-byte header in front of every frame.
struct HTTP2FrameHeader: Equatable, Sendable {
    static let size = 9
    /// The largest payload the 24-bit length field can state.
    static let maxLength = (1 << 24) - 1

    var length: Int
    var type: UInt8
    var flags: UInt8
    /// The reserved top bit is masked off, as receivers must (§4.1).
    var streamID: UInt32

    init(length: Int, type: UInt8, flags: UInt8, streamID: UInt32) {
        self.length = length
        self.type = type
        self.flags = flags
        self.streamID = streamID
    }

    /// Parses exactly `HTTP2FrameHeader.size` bytes.
    init(_ bytes: [UInt8]) {
        precondition(bytes.count == Self.size)
        length = Int(bytes[0]) << 16 | Int(bytes[1]) << 8 | Int(bytes[2])
        type = bytes[3]
        flags = bytes[4]
        streamID = UInt32(bytes: bytes[5...8]) & 0x7fff_ffff
    }

    func has(_ flag: UInt8) -> Bool { flags & flag != 0 }

    var bytes: [UInt8] {
        [UInt8(truncatingIfNeeded: length >> 16), UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length),
         type, flags] + streamID.bigEndianBytes
    }
}

enum HTTP2Frames {
    /// What a client sends first on a prior-knowledge (h2c) connection (§3.4).
    static let clientPreface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// The frame size every peer must accept (§4.2); the frames we write never exceed it.
    static let minimumMaxFrameSize = 16384

    static func frame(type: UInt8, flags: UInt8 = 0, streamID: UInt32, payload: [UInt8] = []) -> [UInt8] {
        HTTP2FrameHeader(length: payload.count, type: type, flags: flags, streamID: streamID).bytes + payload
    }

    static func windowUpdate(streamID: UInt32, increment: Int) -> [UInt8] {
        frame(type: HTTP2FrameType.windowUpdate, streamID: streamID, payload: UInt32(increment).bigEndianBytes)
    }

    static func rstStream(streamID: UInt32, error: HTTP2ErrorCode) -> [UInt8] {
        frame(type: HTTP2FrameType.rstStream, streamID: streamID, payload: error.rawValue.bigEndianBytes)
    }

    static func goaway(lastStreamID: UInt32, error: HTTP2ErrorCode, debug: String) -> [UInt8] {
        frame(type: HTTP2FrameType.goaway, streamID: 0,
              payload: lastStreamID.bigEndianBytes + error.rawValue.bigEndianBytes + Array(debug.utf8.prefix(256)))
    }

    /// A header block as HEADERS plus as many CONTINUATION frames as the block needs at the
    /// minimum frame size. `priority` is the 5-byte priority field, kept when the original
    /// HEADERS carried one; padding is never written.
    static func headerBlock(streamID: UInt32, endStream: Bool, priority: [UInt8]?, block: [UInt8]) -> [UInt8] {
        let prefix = priority ?? []
        let firstRoom = minimumMaxFrameSize - prefix.count
        var flags = endStream ? HTTP2Flag.endStream : 0
        if priority != nil { flags |= HTTP2Flag.priority }
        if block.count <= firstRoom {
            return frame(type: HTTP2FrameType.headers, flags: flags | HTTP2Flag.endHeaders, streamID: streamID,
                         payload: prefix + block)
        }
        var out = frame(type: HTTP2FrameType.headers, flags: flags, streamID: streamID,
                        payload: prefix + Array(block[..<firstRoom]))
        var offset = firstRoom
        while offset < block.count {
            let end = min(offset + minimumMaxFrameSize, block.count)
            out += frame(type: HTTP2FrameType.continuation, flags: end == block.count ? HTTP2Flag.endHeaders : 0,
                         streamID: streamID, payload: Array(block[offset..<end]))
            offset = end
        }
        return out
    }

    /// The (identifier, value) pairs of a SETTINGS payload; nil when its length is not a
    /// multiple of 6 (a FRAME_SIZE_ERROR).
    static func settings(_ payload: [UInt8]) -> [(id: UInt16, value: UInt32)]? {
        guard payload.count % 6 == 0 else { return nil }
        return stride(from: 0, to: payload.count, by: 6).map { (offset: Int) -> (id: UInt16, value: UInt32) in
            let id = UInt16(payload[offset]) << 8 | UInt16(payload[offset + 1])
            return (id, UInt32(bytes: payload[(offset + 2)..<(offset + 6)]))
        }
    }

    static let settingsHeaderTableSize: UInt16 = 0x1
}

extension UInt32 {
    /// Big-endian, from exactly four bytes.
    init(bytes: ArraySlice<UInt8>) {
        self = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }

    var bigEndianBytes: [UInt8] {
        [UInt8(truncatingIfNeeded: self >> 24), UInt8(truncatingIfNeeded: self >> 16),
         UInt8(truncatingIfNeeded: self >> 8), UInt8(truncatingIfNeeded: self)]
    }
}
