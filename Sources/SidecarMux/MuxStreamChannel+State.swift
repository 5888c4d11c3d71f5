import NIOCore

extension MuxStreamChannel {
    /// The channel's life (transitions in MuxStreamChannel.swift):
    ///
    ///     idle --activate--> active --finishClose--> closed
    ///     idle --finishClose (a close, a refusal, the session or connection ending)--> closed
    ///
    /// A close() of an active stream lets what was written before it still go out, then
    /// END_STREAM (`Flush`). The flush begins inside that close() while the stream is still
    /// active (asking for END_STREAM may pump, and whatever runs then must see it) and outlives
    /// the close, so `active` and `closed` both carry it; an idle stream closes at once and
    /// never flushes.
    enum State {
        case idle
        case active(flushing: Flush?)
        case closed(flushing: Flush?)

        /// What a close() of an active stream still owes the peer.
        struct Flush {
            /// After END_STREAM, RST_STREAM(NO_ERROR): nobody reads what the peer still sends.
            /// False for a stream answered with a refusal, which that answer ends.
            var resetAfterEndOfStream: Bool
        }

        var isIdle: Bool {
            if case .idle = self { return true }
            return false
        }

        var isActive: Bool {
            if case .active = self { return true }
            return false
        }

        var isClosed: Bool {
            if case .closed = self { return true }
            return false
        }

        /// Set only while active (inside close()), kept into closed, cleared once END_STREAM is
        /// out or the session drops the stream.
        var flushing: Flush? {
            get {
                switch self {
                case .idle: return nil
                case .active(let flushing), .closed(let flushing): return flushing
                }
            }
            set {
                switch self {
                case .idle: assert(newValue == nil, "an idle stream closes at once; it never flushes")
                case .active: self = .active(flushing: newValue)
                case .closed: self = .closed(flushing: newValue)
                }
            }
        }
    }

    /// The peer's half of the stream. Apart from `State`: END_STREAM may arrive while the
    /// channel is idle or after it closed.
    enum InputHalf {
        case open
        /// END_STREAM arrived (or the session closed the stream cleanly); the EOF follows the
        /// data queued before it.
        case ended
        /// The EOF (`ChannelEvent.inputClosed`) went down the pipeline.
        case endDelivered

        var isEnded: Bool { self != .open }

        /// Idempotent: an EOF already delivered stays delivered.
        mutating func end() {
            if self == .open { self = .ended }
        }
    }

    /// Our half of the stream. Apart from `State`: it keeps flushing after the channel closed.
    enum OutputHalf {
        /// Writes are taken.
        case open
        /// Output ended (a shutdown, or a close): END_STREAM goes out after what is queued.
        /// `closePromise`: the shutdown's, completed once END_STREAM is out.
        case ended(closePromise: EventLoopPromise<Void>?)
        /// nghttp2 took END_STREAM; the promise is completed after the send returns.
        case endOfStreamSent(closePromise: EventLoopPromise<Void>?)

        var isEnded: Bool {
            if case .open = self { return false }
            return true
        }

        var endOfStreamSent: Bool {
            if case .endOfStreamSent = self { return true }
            return false
        }

        /// Exists only once output ended.
        var closePromise: EventLoopPromise<Void>? {
            get {
                switch self {
                case .open: return nil
                case .ended(let promise), .endOfStreamSent(let promise): return promise
                }
            }
            set {
                switch self {
                case .open: assert(newValue == nil, "a shutdown promise before the output ended")
                case .ended: self = .ended(closePromise: newValue)
                case .endOfStreamSent: self = .endOfStreamSent(closePromise: newValue)
                }
            }
        }

        /// Idempotent: END_STREAM already taken stays taken, a promise stays.
        mutating func end() {
            if case .open = self { self = .ended(closePromise: nil) }
        }

        /// nghttp2 took END_STREAM (only ever after the output ended).
        mutating func endOfStreamTaken() {
            assert(isEnded, "END_STREAM before the output ended")
            self = .endOfStreamSent(closePromise: closePromise)
        }
    }
}
