/// Finds frame boundaries in an HTTP/2 byte stream that arrives in arbitrary pieces. It never
/// copies payloads: it reports where each frame's header completes and which part of the
/// current input belongs to the current frame's payload, so its owner decides per frame
/// whether to buffer, pass through or skip. Used for both directions of the L7 filter.
struct HTTP2FrameScanner {
    enum Event {
        /// A frame header is complete (its bytes may have spanned earlier inputs).
        case header(HTTP2FrameHeader)
        /// Payload bytes of the current frame, as a range of the current input.
        case payload(Range<Int>)
        /// The current frame is complete; its last byte ends just before this input offset.
        case frameEnd(Int)
    }

    private var partialHeader: [UInt8] = []
    /// Payload bytes of the current frame still to come; nil while reading a header.
    private var remaining: Int?

    /// True between frames: no header or payload byte of an unfinished frame has been seen.
    var atFrameBoundary: Bool { remaining == nil && partialHeader.isEmpty }

    mutating func scan(_ input: UnsafeRawBufferPointer, _ handle: (Event) -> Void) {
        var offset = 0
        while offset < input.count {
            if let left = remaining {
                let take = min(left, input.count - offset)
                handle(.payload(offset..<(offset + take)))
                offset += take
                remaining = left - take
                if left == take { finishFrame(at: offset, handle) }
                continue
            }
            let take = min(HTTP2FrameHeader.size - partialHeader.count, input.count - offset)
            partialHeader += input[offset..<(offset + take)]
            offset += take
            guard partialHeader.count == HTTP2FrameHeader.size else { continue }
            let header = HTTP2FrameHeader(partialHeader)
            partialHeader.removeAll(keepingCapacity: true)
            handle(.header(header))
            remaining = header.length
            if header.length == 0 { finishFrame(at: offset, handle) }
        }
    }

    private mutating func finishFrame(at offset: Int, _ handle: (Event) -> Void) {
        remaining = nil
        handle(.frameEnd(offset))
    }
}
