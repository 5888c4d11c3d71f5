import Foundation
import Testing
import TestFixtures

/// What the shipped binary is made of, read from the binary itself.
@Suite("Binary contents")
struct BinaryContentsTests {
    @Test("One TLS and crypto implementation: system OpenSSL 3; no BoringSSL copy is linked in")
    func noBoringSSL() async throws {
        let binary = SidecarBinary.path
        let symbols = try await ProcessRunner.run(["nm", "--defined-only", binary])
        #expect(symbols.status == 0, "\(symbols.output.prefix(500))")
        // The symbol table is large: count, then show a few offenders.
        let lines = symbols.output.split(separator: "\n")
        #expect(lines.count > 1000, "nm read the binary")
        let boring = lines.filter { $0.contains("BoringSSL") || $0.contains("CNIOBoringSSL") || $0.contains("CCryptoBoringSSL") }
        #expect(boring.isEmpty, "\(boring.count) BoringSSL symbols, e.g. \(boring.prefix(3))")
        let libraries = try await ProcessRunner.run(["ldd", binary])
        #expect(libraries.output.contains("libssl.so.3") && libraries.output.contains("libcrypto.so.3"), "\(libraries.output)")
    }

    /// Foundation proper brings ICU (~30 MiB of code and data, several MiB resident in every
    /// sidecar); the sidecar's modules use FoundationEssentials only. Read from the linked
    /// libraries (a dynamic build) and from the symbols (the static build links ICU in).
    @Test("No Foundation proper and no ICU in the binary: FoundationEssentials only")
    func noICU() async throws {
        let binary = SidecarBinary.path
        let libraries = try await ProcessRunner.run(["ldd", binary])
        #expect(libraries.status == 0, "\(libraries.output)")
        for library in ["libFoundation.so", "libFoundationInternationalization.so", "lib_FoundationICU.so"] {
            #expect(!libraries.output.contains(library), "\(library) is linked: \(libraries.output)")
        }
        let symbols = try await ProcessRunner.run(["nm", "--defined-only", binary])
        let icu = symbols.output.split(separator: "\n").filter { $0.contains("ucol_open") || $0.contains("udat_open") }
        #expect(icu.isEmpty, "ICU symbols: \(icu.prefix(3))")
    }
}
