import Foundation
#if FUZZING
import CLibFuzzer
#endif

/// The signature libFuzzer calls for every input.
package typealias FuzzTest = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

package enum FuzzDriver {
    /// Built by bench/fuzz.sh (`-DFUZZING`, `-sanitize=fuzzer`): hands control to libFuzzer.
    /// A normal build has no libFuzzer to link, so the target replays the files (or corpus
    /// directories) named on the command line instead: it still builds, and reruns a crash.
    package static func main(_ test: FuzzTest) -> Never {
        #if FUZZING
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, test))
        #else
        var count = 0
        for path in CommandLine.arguments.dropFirst() {
            for file in files(at: path) {
                guard let data = FileManager.default.contents(atPath: file) else {
                    FileHandle.standardError.write(Data("cannot read \(file)\n".utf8))
                    exit(2)
                }
                _ = data.withUnsafeBytes { test($0.bindMemory(to: UInt8.self).baseAddress, $0.count) }
                count += 1
            }
        }
        print("replayed \(count) input(s) without failure")
        exit(0)
        #endif
    }

    private static func files(at path: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return [path] }
        return names.sorted().map { "\(path)/\($0)" }
    }
}

/// A failed invariant: trap so libFuzzer records the input as a crash.
package func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant violated: \(message())") }
}
