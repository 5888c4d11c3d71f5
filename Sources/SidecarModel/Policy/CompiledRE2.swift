import CRE2

/// One compiled RE2 program, freed with its last reference.
/// `@unchecked Sendable`: RE2 objects are immutable after compilation and documented safe for
/// concurrent matching from any number of threads.
final class CompiledRE2: @unchecked Sendable {
    private let regex: OpaquePointer

    struct InvalidPattern: Error, CustomStringConvertible {
        let description: String
    }

    init(_ pattern: String, maxProgramSize: Int) throws {
        var error = [CChar](repeating: 0, count: 256)
        let compiled = pattern.utf8CString.withUnsafeBufferPointer { text in
            sidecar_re2_compile(text.baseAddress, text.count - 1, Int32(clamping: maxProgramSize), &error, error.count)
        }
        guard let compiled else {
            throw InvalidPattern(description: String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        regex = compiled
    }

    deinit { sidecar_re2_free(regex) }

    func fullMatch(_ text: String) -> Bool {
        var text = text
        return text.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { sidecar_re2_full_match(regex, $0.baseAddress, $0.count) == 1 }
        }
    }
}
