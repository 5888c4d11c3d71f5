import FuzzSupport
import SidecarModel

/// The request-target normaliser, under each option set. Input: an option byte, then the target.
/// Invariants: a normalised target starts with "/", has no dot segment, no encoded unreserved
/// character, no byte outside the path alphabet, keeps the query exactly, and normalising it
/// again changes nothing (what we decide on is what the service gets, and would decide the same).
@_cdecl("LLVMFuzzerTestOneInput")
func pathNormalizerFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let flags = input.byte()
    let options = PathNormalization(mergeSlashes: flags & 1 != 0,
                                    escapedSlashes: PathNormalization.EscapedSlashes.allCases[Int(flags >> 1) % 3])
    let target = String(decoding: input.remainder(), as: UTF8.self)
    guard case .success(let normalized) = RequestPathNormalizer.normalize(target, options) else { return 0 }
    let path = normalized.path
    invariant(path.hasPrefix("/"), "path \(path) does not start with /")
    let segments = path.split(separator: "/", omittingEmptySubsequences: false)
    invariant(!segments.contains(".") && !segments.contains(".."), "dot segment left in \(path)")
    let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%".utf8)
    invariant(path.utf8.allSatisfy(allowed.contains), "byte outside the path alphabet in \(path)")
    var bytes = Array(path.utf8)[...]
    while let percent = bytes.firstIndex(of: UInt8(ascii: "%")) {
        let hex = bytes.dropFirst(percent - bytes.startIndex + 1).prefix(2)
        invariant(hex.count == 2, "truncated escape in \(path)")
        let value = UInt8(String(decoding: hex, as: UTF8.self), radix: 16) ?? 0
        let unreserved = value < 0x80 && (Character(Unicode.Scalar(value)).isLetter || Character(Unicode.Scalar(value)).isNumber
            || "-._~".utf8.contains(value))
        invariant(!unreserved && value != 0, "escape %\(String(decoding: hex, as: UTF8.self)) left in \(path)")
        invariant(options.escapedSlashes == .keep || (value != 0x2F && value != 0x5C), "escaped slash kept in \(path)")
        bytes = bytes[(percent + 3)...]
    }
    if options.mergeSlashes { invariant(!path.contains("//"), "slashes not merged in \(path)") }
    if let question = target.firstIndex(of: "?") {
        invariant(normalized.query == String(target[target.index(after: question)...]), "query changed")
    } else {
        invariant(normalized.query == nil, "query invented")
    }
    let again = RequestPathNormalizer.normalize(normalized.target, options)
    invariant(again == .success(normalized), "not idempotent: \(target) -> \(normalized.target) -> \(again)")
    return 0
}

@main enum PathNormalizerFuzzMain {
    static func main() { FuzzDriver.main(pathNormalizerFuzz) }
}
