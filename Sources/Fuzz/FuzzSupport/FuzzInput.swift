/// Reads structured values off the front of a fuzz input; past the end everything is zero or
/// empty, so every input is usable.
package struct FuzzInput {
    package private(set) var rest: ArraySlice<UInt8>

    package init(_ data: UnsafePointer<UInt8>?, _ count: Int) {
        rest = ArraySlice(UnsafeBufferPointer(start: data, count: count))
    }

    package var isEmpty: Bool { rest.isEmpty }

    package mutating func byte() -> UInt8 { rest.popFirst() ?? 0 }

    package mutating func bytes(_ count: Int) -> [UInt8] {
        let taken = Array(rest.prefix(count))
        rest = rest.dropFirst(count)
        return taken + Array(repeating: 0, count: count - taken.count)
    }

    /// The bytes up to the next NUL (consumed, not returned), decoded as UTF-8 with repairs.
    package mutating func field() -> String {
        let end = rest.firstIndex(of: 0) ?? rest.endIndex
        let text = String(decoding: rest[..<end], as: UTF8.self)
        rest = rest[end...].dropFirst()
        return text
    }

    /// Everything left, consumed.
    package mutating func remainder() -> [UInt8] {
        defer { rest = [] }
        return Array(rest)
    }
}
