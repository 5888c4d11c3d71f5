/// Reads structured values off the front of a fuzz input; past the end everything is zero or
/// empty, so every input is usable.
public struct FuzzInput {
    public private(set) var rest: ArraySlice<UInt8>

    public init(_ data: UnsafePointer<UInt8>?, _ count: Int) {
        rest = ArraySlice(UnsafeBufferPointer(start: data, count: count))
    }

    public var isEmpty: Bool { rest.isEmpty }

    public mutating func byte() -> UInt8 { rest.popFirst() ?? 0 }

    public mutating func bytes(_ count: Int) -> [UInt8] {
        let taken = Array(rest.prefix(count))
        rest = rest.dropFirst(count)
        return taken + Array(repeating: 0, count: count - taken.count)
    }

    /// The bytes up to the next NUL (consumed, not returned), decoded as UTF-8 with repairs.
    public mutating func field() -> String {
        let end = rest.firstIndex(of: 0) ?? rest.endIndex
        let text = String(decoding: rest[..<end], as: UTF8.self)
        rest = rest[end...].dropFirst()
        return text
    }

    /// Everything left, consumed.
    public mutating func remainder() -> [UInt8] {
        defer { rest = [] }
        return Array(rest)
    }
}
