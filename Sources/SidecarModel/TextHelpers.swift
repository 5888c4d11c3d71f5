import FoundationEssentials
import Glibc

/// Path text without Foundation's `NSString` (which would bring ICU into the binary).
package enum FilePath {
    /// The directory part of `path`: "." for a bare name, "/" for a name in the root.
    package static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// `directory` and `name` joined with exactly one "/".
    package static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }
}

extension StringProtocol {
    /// The text without leading and trailing whitespace (spaces, tabs, newlines: Unicode's
    /// `Character.isWhitespace`). Ours, so that no module needs Foundation's `CharacterSet`,
    /// which would link ICU into the binary.
    package func trimmingWhitespace() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }) else { return "" }
        let last = lastIndex(where: { !$0.isWhitespace })!
        return String(self[first...last])
    }
}

/// A file-system error as one short phrase ("No such file or directory"), where Foundation's
/// `localizedDescription` (not in FoundationEssentials) would have been used.
package enum FileSystemErrorText {
    package static func describe(_ error: any Error) -> String {
        if let cocoa = error as? CocoaError, let posix = cocoa.underlying as? POSIXError {
            return String(cString: strerror(posix.code.rawValue))
        }
        if let posix = error as? POSIXError { return String(cString: strerror(posix.code.rawValue)) }
        return "\(error)"
    }
}

extension Double {
    /// One decimal place ("1.5", "30.0"), rounded half away from zero: for log fields, where
    /// Foundation's `String(format:)` would have been used.
    package var oneDecimal: String {
        guard isFinite, abs(self) < 1e15 else { return "\(self)" }
        let tenths = (self * 10).rounded()
        let sign = tenths < 0 ? "-" : ""
        let magnitude = Int(abs(tenths))
        return "\(sign)\(magnitude / 10).\(magnitude % 10)"
    }
}

/// Lowercase hex, two digits a byte (digests, random ids). Written straight into the string's
/// storage: every audit line's chain hash goes through here, and a String per byte made this
/// 7 % of a storage sidecar's instructions per mux connection (callgrind). Inlinable, so the
/// digest code in another module gets a specialized copy, not the generic one (5x slower).
@inlinable
package func lowercaseHex(_ bytes: some Collection<UInt8>) -> String {
    String(unsafeUninitializedCapacity: bytes.count * 2) { out in
        var index = 0
        for byte in bytes {
            out[index] = lowercaseHexDigit(byte >> 4)
            out[index + 1] = lowercaseHexDigit(byte & 0x0f)
            index += 2
        }
        return index
    }
}

/// The decimal digits of `value` from the place `place` (a power of ten, or 0 for none) down,
/// leading zeros included: the one digit writer of audit lines' numbers and timestamps.
/// Appended from the left: writing into zeros from the right went through checked subscripts,
/// ~220 instructions a timestamp field (callgrind).
package func appendDecimalDigits(of value: UInt, fromPlace place: UInt, to out: inout [UInt8]) {
    var place = place
    while place > 0 {
        out.append(UInt8(ascii: "0") + UInt8(value / place % 10))
        place /= 10
    }
}

/// One lowercase hex digit for a value 0...15.
@inlinable @inline(__always)
package func lowercaseHexDigit(_ nibble: UInt8) -> UInt8 {
    nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
}
