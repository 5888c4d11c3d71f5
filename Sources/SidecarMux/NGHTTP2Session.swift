import CNGHTTP2
import NIOCore

/// What a stream offers nghttp2 to send: the DATA frames' payload goes straight from here into
/// the outbound frames (NO_COPY), never staged in nghttp2's own buffers.
protocol MuxOutboundSource: AnyObject {
    /// Bytes queued and whether the stream's output ends after them.
    var outboundState: (queued: Int, ended: Bool) { get }
    /// Whether the frame nghttp2 prepared for `count` bytes may still go out: an abort after
    /// it was prepared (it waited for a full send chunk) dropped its bytes, and it must not go
    /// out with anything in their place, nor with its END_STREAM.
    func canSend(_ count: Int) -> Bool
    /// Moves exactly `count` queued bytes into `frames`. `endsStream`: the frame carries
    /// END_STREAM (fixed when nghttp2 prepared it, which may be a send or more earlier).
    func takeOutbound(_ count: Int, endsStream: Bool, into frames: inout OutboundFrames)
}

/// One nghttp2 session, either role, as a plain object: bytes in, events out; frames out into a
/// ByteBuffer. It knows nothing of channels. Callbacks only record events; the owner handles
/// them after `receive` returns, so nothing re-enters nghttp2 from inside a callback.
final class NGHTTP2Session {
    enum Role { case client, server }

    enum Event {
        /// Server: a complete request header block on a new stream.
        case request(streamID: Int32, headers: [(name: String, value: String)])
        /// Client: the response status (or a trailer-less final header block) on a stream.
        case response(streamID: Int32, status: Int)
        case data(streamID: Int32, ByteBuffer)
        /// The peer ended its side of the stream (END_STREAM).
        case endOfInput(streamID: Int32)
        /// The stream is gone from the session: both ends done (code 0) or reset.
        case closed(streamID: Int32, errorCode: UInt32)
        case goaway(lastStreamID: Int32, errorCode: UInt32)
        /// The ACK of a PING we sent with `tag` as its opaque data (0 for keepalive PINGs).
        case pingAcknowledged(tag: UInt64)
    }

    struct Settings {
        /// Streams the peer may open toward us at once (server role).
        var maxConcurrentStreams: Int
        /// What the peer may send on a new stream before we consume it (grown per stream by
        /// `setWindow`).
        var streamWindow: Int32
        /// Across all streams of the connection.
        var connectionWindow: Int32
    }

    let role: Role
    private let session: OpaquePointer
    private let allocator: ByteBufferAllocator
    private(set) var events: [Event] = []
    private var pendingHeaders: [Int32: [(name: String, value: String)]] = [:]
    /// Filled by `send`; stops taking frames once it exceeds `sendLimit`.
    private var outbound: OutboundFrames
    private var sendLimit = 0
    /// During `receive`: the input and where its readable bytes start, so DATA payloads (which
    /// nghttp2 hands out as pointers into the input) become slices of it instead of copies.
    private var input: (buffer: ByteBuffer, base: UnsafeRawPointer)?

    /// The largest DATA payload we send and accept (HTTP/2's default is 16 KiB).
    static let maxDataFrame = 64 * 1024

    init(role: Role, settings: Settings, allocator: ByteBufferAllocator) throws {
        self.role = role
        self.allocator = allocator
        self.outbound = OutboundFrames(allocator: allocator)
        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let option else { throw MuxError.sessionSetup("nghttp2_option_new") }
        defer { nghttp2_option_del(option) }
        // Window updates follow what the local side actually consumed, so a slow reader holds
        // back only its own stream.
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_peer_max_concurrent_streams(option, 100)
        var created: OpaquePointer?
        // No callback runs during creation; the user data (self) is set right after.
        let rc = role == .client
            ? nghttp2_session_client_new2(&created, NGHTTP2Callbacks.shared, nil, option)
            : nghttp2_session_server_new2(&created, NGHTTP2Callbacks.shared, nil, option)
        guard rc == 0, let created else { throw MuxError.sessionSetup("nghttp2 session: \(Self.describe(rc))") }
        session = created
        nghttp2_session_set_user_data(session, Unmanaged.passUnretained(self).toOpaque())

        var entries = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(settings.streamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            // Bulk tunnels move in fewer, larger DATA frames (when the peer allows them too).
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: UInt32(Self.maxDataFrame)),
        ]
        if role == .server {
            entries.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                                  value: UInt32(settings.maxConcurrentStreams)))
        }
        let submitted = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), entries, entries.count)
        guard submitted == 0 else { throw MuxError.sessionSetup("SETTINGS: \(Self.describe(submitted))") }
        let window = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, settings.connectionWindow)
        guard window == 0 else { throw MuxError.sessionSetup("connection window: \(Self.describe(window))") }
    }

    deinit { nghttp2_session_del(session) }

    // MARK: Input

    /// Feeds received bytes; the events they produced are in `events` until `takeEvents()`.
    /// Throws on a connection-level protocol error (nghttp2 has queued a GOAWAY: send it).
    func receive(_ bytes: ByteBuffer) throws {
        let consumed = bytes.withUnsafeReadableBytes { raw -> Int in
            guard let base = raw.baseAddress else { return 0 }
            input = (bytes, base)
            defer { input = nil }
            return nghttp2_session_mem_recv(session, base.assumingMemoryBound(to: UInt8.self), raw.count)
        }
        if consumed < 0 { throw MuxError.protocolViolation(Self.describe(Int32(consumed))) }
    }

    func takeEvents() -> [Event] {
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    /// The application has taken `count` bytes of a stream's data: the peer may send that much more.
    func consumed(_ count: Int, on streamID: Int32) {
        guard count > 0 else { return }
        if nghttp2_session_consume(session, streamID, count) != 0 {
            // The stream is already closed: only the connection window is still owed.
            _ = nghttp2_session_consume_connection(session, count)
        }
    }

    /// Data that arrived for a stream nobody reads any more still counts against the connection.
    func discarded(_ count: Int) {
        if count > 0 { _ = nghttp2_session_consume_connection(session, count) }
    }

    // MARK: Output

    var wantsToWrite: Bool { nghttp2_session_want_write(session) != 0 }
    /// Both false: the session has ended (GOAWAY exchanged and no stream left).
    var isAlive: Bool { nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0 }

    /// Serializes pending frames, up to about `limit` bytes (a DATA frame is never split), as
    /// buffers to write in order (OutboundFrames); empty when nothing is pending.
    func send(limit: Int) throws -> OutboundFrames {
        outbound = OutboundFrames(allocator: allocator)
        sendLimit = limit
        let rc = nghttp2_session_send(session)
        defer { outbound = OutboundFrames(allocator: allocator) }
        if rc != 0 { throw MuxError.protocolViolation(Self.describe(rc)) }
        return outbound
    }

    /// Client: opens a CONNECT stream to `authority`. Its DATA comes from `source`.
    func submitConnect(authority: String, source: MuxOutboundSource) throws -> Int32 {
        let id = withHeaderBlock([(":method", "CONNECT"), (":authority", authority)]) { block in
            var provider = Self.dataProvider(source)
            return nghttp2_submit_request(session, nil, block.baseAddress, block.count, &provider, nil)
        }
        guard id > 0 else { throw MuxError.streamRefused(Self.describe(id)) }
        return id
    }

    /// Server: answers a stream. With `source`, DATA follows; without, the response ends the stream.
    func submitResponse(streamID: Int32, status: Int, extraHeaders: [(String, String)] = [], source: MuxOutboundSource?) {
        _ = withHeaderBlock([(":status", String(status))] + extraHeaders) { block in
            if let source {
                var provider = Self.dataProvider(source)
                return nghttp2_submit_response(session, streamID, block.baseAddress, block.count, &provider)
            }
            return nghttp2_submit_response(session, streamID, block.baseAddress, block.count, nil)
        }
    }

    /// More data (or the end) was queued on a deferred stream.
    func resume(streamID: Int32) { _ = nghttp2_session_resume_data(session, streamID) }

    func reset(streamID: Int32, errorCode: UInt32) {
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, errorCode)
    }

    /// A PING; the peer's nghttp2 answers it with an ACK carrying `tag` back (keepalive: 0).
    func ping(tag: UInt64 = 0) {
        withUnsafeBytes(of: tag.bigEndian) { opaque in
            _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), opaque.bindMemory(to: UInt8.self).baseAddress)
        }
    }

    /// Lets the peer have `window` bytes of a stream in flight: a larger window is announced at
    /// once (WINDOW_UPDATE for the difference); a smaller one withholds credit until the bytes
    /// in flight are under it (the peer keeps what it was given, so no flow-control error).
    func setWindow(_ window: Int32, on streamID: Int32) {
        _ = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, window)
    }

    /// What the peer may still send on a stream before it must wait for us (for tests).
    func peerSendWindow(on streamID: Int32) -> Int {
        Int(nghttp2_session_get_stream_remote_window_size(session, streamID))
    }

    /// Server: "stop opening streams" without refusing any yet (GOAWAY with the maximum id).
    func announceShutdown() { _ = nghttp2_submit_shutdown_notice(session) }

    /// Graceful: streams up to the last one processed finish; later ones are refused.
    func goAway() {
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue),
                                  nghttp2_session_get_last_proc_stream_id(session), NGHTTP2_NO_ERROR.rawValue, nil, 0)
    }

    /// The peer's limit on streams we may have open at once.
    var remoteMaxConcurrentStreams: Int {
        Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
    }

    // MARK: Helpers

    private static func dataProvider(_ source: MuxOutboundSource) -> nghttp2_data_provider {
        nghttp2_data_provider(source: nghttp2_data_source(ptr: Unmanaged.passUnretained(source as AnyObject).toOpaque()),
                              read_callback: NGHTTP2Callbacks.readData)
    }

    private func withHeaderBlock<R>(_ headers: [(String, String)], _ body: (UnsafeMutableBufferPointer<nghttp2_nv>) -> R) -> R {
        // All names and values in one buffer, pointed into only while it is borrowed here:
        // nghttp2 copies them at submit time.
        var bytes = headers.flatMap { Array($0.0.utf8) + Array($0.1.utf8) }
        return bytes.withUnsafeMutableBufferPointer { storage -> R in
            var block: [nghttp2_nv] = []
            block.reserveCapacity(headers.count)
            var offset = 0
            for (name, value) in headers {
                let nameLength = name.utf8.count, valueLength = value.utf8.count
                let start = storage.baseAddress! + offset
                block.append(nghttp2_nv(name: start, value: start + nameLength, namelen: nameLength,
                                        valuelen: valueLength, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                offset += nameLength + valueLength
            }
            return block.withUnsafeMutableBufferPointer { body($0) }
        }
    }

    static func describe(_ code: Int32) -> String { String(cString: nghttp2_strerror(code)) }

    fileprivate static func from(_ userData: UnsafeMutableRawPointer?) -> NGHTTP2Session? {
        guard let userData else { return nil }
        return Unmanaged<NGHTTP2Session>.fromOpaque(userData).takeUnretainedValue()
    }

    // MARK: Callback bodies

    fileprivate func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard outbound.byteCount < sendLimit else { return false }
        outbound.write(bytes)
        return true
    }

    fileprivate func appendData(frameHeader: UnsafeRawBufferPointer, length: Int, padding: Int, endsStream: Bool,
                                source: MuxOutboundSource) -> Bool {
        guard outbound.byteCount < sendLimit else { return false }
        outbound.write(frameHeader)
        if padding > 0 { outbound.writeInteger(UInt8(padding - 1)) }
        source.takeOutbound(length, endsStream: endsStream, into: &outbound)
        outbound.writeZeros(padding - 1)
        return true
    }

    fileprivate func beginHeaders(streamID: Int32) { pendingHeaders[streamID] = [] }

    fileprivate func header(streamID: Int32, name: String, value: String) {
        pendingHeaders[streamID, default: []].append((name, value))
    }

    fileprivate func frameReceived(type: UInt8, flags: UInt8, streamID: Int32, category: nghttp2_headers_category?,
                                   goaway: (Int32, UInt32)?, pingTag: UInt64?) {
        let endStream = flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch UInt32(type) {
        case NGHTTP2_HEADERS.rawValue:
            let headers = pendingHeaders.removeValue(forKey: streamID) ?? []
            switch (role, category) {
            case (.server, NGHTTP2_HCAT_REQUEST):
                events.append(.request(streamID: streamID, headers: headers))
            case (.client, NGHTTP2_HCAT_RESPONSE):
                let status = headers.first { $0.name == ":status" }.flatMap { Int($0.value) } ?? 0
                events.append(.response(streamID: streamID, status: status))
            default:
                break // Trailers or informational responses carry nothing a tunnel needs.
            }
            if endStream { events.append(.endOfInput(streamID: streamID)) }
        case NGHTTP2_DATA.rawValue:
            if endStream { events.append(.endOfInput(streamID: streamID)) }
        case NGHTTP2_GOAWAY.rawValue:
            if let goaway { events.append(.goaway(lastStreamID: goaway.0, errorCode: goaway.1)) }
        case NGHTTP2_PING.rawValue:
            if flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0, let pingTag { events.append(.pingAcknowledged(tag: pingTag)) }
        default:
            break
        }
    }

    fileprivate func dataChunk(streamID: Int32, _ bytes: UnsafeRawBufferPointer) {
        if let (buffer, base) = input, let start = bytes.baseAddress {
            let offset = start - base
            // A slice holds the whole input buffer while it waits for its reader: only for a
            // payload worth at least an eighth of it (a tiny one is copied, below).
            if offset >= 0, offset + bytes.count <= buffer.readableBytes, bytes.count * 8 >= buffer.storageCapacity,
               let slice = buffer.getSlice(at: buffer.readerIndex + offset, length: bytes.count) {
                events.append(.data(streamID: streamID, slice))
                return
            }
        }
        var copy = allocator.buffer(capacity: bytes.count)
        copy.writeBytes(bytes)
        events.append(.data(streamID: streamID, copy))
    }

    fileprivate func streamClosed(streamID: Int32, errorCode: UInt32) {
        pendingHeaders[streamID] = nil
        events.append(.closed(streamID: streamID, errorCode: errorCode))
    }
}

/// The C callbacks, set up once; each forwards to the session named by its user data.
private enum NGHTTP2Callbacks {
    nonisolated(unsafe) static let shared: OpaquePointer = {
        var callbacks: OpaquePointer?
        precondition(nghttp2_session_callbacks_new(&callbacks) == 0, "nghttp2_session_callbacks_new")
        nghttp2_session_callbacks_set_send_callback(callbacks, send)
        nghttp2_session_callbacks_set_send_data_callback(callbacks, sendData)
        nghttp2_session_callbacks_set_data_source_read_length_callback(callbacks, dataLength)
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, beginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, frameReceived)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, dataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, streamClosed)
        return callbacks!
    }()

    static let wouldBlock = Int(NGHTTP2_ERR_WOULDBLOCK.rawValue)

    static let send: nghttp2_send_callback = { _, data, length, _, userData in
        guard let session = NGHTTP2Session.from(userData), let data else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        return session.append(UnsafeRawBufferPointer(start: data, count: length)) ? length : wouldBlock
    }

    static let sendData: nghttp2_send_data_callback = { _, frame, frameHeader, length, source, userData in
        guard let session = NGHTTP2Session.from(userData), let frame, let frameHeader, let pointer = source?.pointee.ptr else {
            return NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
        }
        let stream = Unmanaged<AnyObject>.fromOpaque(pointer).takeUnretainedValue() as! MuxOutboundSource
        // nghttp2 drops the frame and resets the stream (INTERNAL_ERROR; ours is queued too).
        guard stream.canSend(length) else { return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue }
        let endsStream = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        let sent = session.appendData(frameHeader: UnsafeRawBufferPointer(start: frameHeader, count: 9), length: length,
                                      padding: Int(frame.pointee.data.padlen), endsStream: endsStream, source: stream)
        return sent ? 0 : NGHTTP2_ERR_WOULDBLOCK.rawValue
    }

    /// Up to what the peer's SETTINGS allow, not nghttp2's fixed 16 KiB.
    static let dataLength: nghttp2_data_source_read_length_callback = { _, _, _, connectionWindow, streamWindow, peerMaxFrame, _ in
        min(Int(connectionWindow), Int(streamWindow), Int(peerMaxFrame), NGHTTP2Session.maxDataFrame)
    }

    static let readData: nghttp2_data_source_read_callback = { _, _, _, length, flags, source, _ in
        guard let pointer = source?.pointee.ptr, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        let stream = Unmanaged<AnyObject>.fromOpaque(pointer).takeUnretainedValue() as! MuxOutboundSource
        let (queued, ended) = stream.outboundState
        if queued == 0 && !ended { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }
        let count = min(queued, length)
        flags.pointee |= NGHTTP2_DATA_FLAG_NO_COPY.rawValue
        if ended && count == queued { flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
        return count
    }

    static let beginHeaders: nghttp2_on_begin_headers_callback = { _, frame, userData in
        guard let session = NGHTTP2Session.from(userData), let frame else { return 0 }
        session.beginHeaders(streamID: frame.pointee.hd.stream_id)
        return 0
    }

    static let header: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
        guard let session = NGHTTP2Session.from(userData), let frame, let name, let value else { return 0 }
        session.header(streamID: frame.pointee.hd.stream_id,
                       name: String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self),
                       value: String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self))
        return 0
    }

    static let frameReceived: nghttp2_on_frame_recv_callback = { _, frame, userData in
        guard let session = NGHTTP2Session.from(userData), let frame else { return 0 }
        let hd = frame.pointee.hd
        let category = UInt32(hd.type) == NGHTTP2_HEADERS.rawValue ? frame.pointee.headers.cat : nil
        let goaway = UInt32(hd.type) == NGHTTP2_GOAWAY.rawValue
            ? (frame.pointee.goaway.last_stream_id, frame.pointee.goaway.error_code) : nil
        let pingTag = UInt32(hd.type) == NGHTTP2_PING.rawValue
            ? withUnsafeBytes(of: frame.pointee.ping.opaque_data) { UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)) } : nil
        session.frameReceived(type: hd.type, flags: hd.flags, streamID: hd.stream_id, category: category, goaway: goaway,
                              pingTag: pingTag)
        return 0
    }

    static let dataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, data, length, userData in
        guard let session = NGHTTP2Session.from(userData), let data else { return 0 }
        session.dataChunk(streamID: streamID, UnsafeRawBufferPointer(start: data, count: length))
        return 0
    }

    static let streamClosed: nghttp2_on_stream_close_callback = { _, streamID, errorCode, userData in
        NGHTTP2Session.from(userData)?.streamClosed(streamID: streamID, errorCode: errorCode)
        return 0
    }
}
