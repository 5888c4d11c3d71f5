import Foundation
import Testing
import TestFixtures

/// How the shipped binary is linked (scripts/shipped-build.sh), read from the unstripped build
/// that scripts/package.sh packaged (scripts/test.sh runs it before the suite).
@Suite("Shipped binary layout", .serialized)
struct ShippedLayoutTests {
    static let root = TestCertificates.repositoryRoot
    static let binary = root.appendingPathComponent(".build-static/release/backup-sidecar").path

    static func run(_ arguments: [String]) async throws -> String {
        let result = try await ProcessRunner.run(arguments, timeout: 120)
        #expect(result.status == 0, "\(arguments.joined(separator: " ")): \(result.output.prefix(300))")
        return result.output
    }

    /// A section's address and size, from the binary's section table.
    static func section(_ name: String) async throws -> (start: UInt64, size: UInt64) {
        let sections = try await run(["readelf", "-SW", binary]).split(separator: "\n")
        let fields = try #require(sections.first { $0.contains(" \(name) ") }, "no \(name) section").split(separator: " ")
        let index = try #require(fields.firstIndex { $0 == name })
        return (try #require(UInt64(fields[index + 2], radix: 16)), try #require(UInt64(fields[index + 4], radix: 16)))
    }

    /// The binary's defined symbols whose nm type letter is one of `types`, in nm's order (a
    /// local name defined in several objects comes once per definition).
    static func symbols(ofTypes types: String) async throws -> [(name: String, address: UInt64)] {
        try await run(["nm", "--defined-only", binary]).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 3, types.contains(fields[1]), let address = UInt64(fields[0], radix: 16) else { return nil }
            return (String(fields[2]), address)
        }
    }

    /// The packaged binary is this build, stripped: the same GNU build ID.
    @Test("The unstripped shipped build is the packaged binary (same build ID)")
    func sameBuildAsPackage() async throws {
        let root = try await DebianPackageTests.extracted()
        defer { try? FileManager.default.removeItem(atPath: root) }
        func buildID(_ path: String) async throws -> String? {
            try await Self.run(["readelf", "-n", path]).split(separator: "\n")
                .first { $0.contains("Build ID:") }.map { String($0.split(separator: ":").last ?? "").trimmingCharacters(in: .whitespaces) }
        }
        let shipped = try await buildID(Self.binary)
        let packaged = try await buildID("\(root)/usr/bin/backup-sidecar")
        #expect(shipped != nil && shipped == packaged, "build IDs: \(shipped ?? "none") here, \(packaged ?? "none") in the package")
    }

    /// The toolchain's static-stdlib link arguments pass -export-dynamic; shipped-build.sh undoes
    /// it by coming later. Exported, our 12,745 symbols kept 1.1 MiB of symbol tables resident.
    /// A libc variable that static libstdc++ reads (stderr) is defined here by a copy
    /// relocation: that is glibc's object placed in our data, not an export of ours.
    @Test("No dynamic symbol exports: the binary defines nothing in .dynsym but copy-relocated libc data")
    func noDynamicExports() async throws {
        let symbols = try await Self.run(["readelf", "--dyn-syms", "-W", Self.binary]).split(separator: "\n")
        let copied = Set(try await Self.run(["readelf", "-rW", Self.binary]).split(separator: "\n")
            .filter { $0.contains(" R_X86_64_COPY ") }.compactMap { $0.split(separator: " ").dropLast(2).last.map(String.init) })
        let defined = symbols.filter { line in
            let fields = line.split(separator: " ")
            return fields.count >= 8 && fields[0].hasSuffix(":") && fields[0].dropLast().allSatisfy(\.isNumber)
                && fields[0] != "0:" && fields[6] != "UND" && !(copied.contains(String(fields[7])) && fields[7].contains("@GLIBC_"))
        }
        #expect(defined.isEmpty, "\(defined.count) defined dynamic symbols, e.g. \(defined.prefix(3))")
        #expect(symbols.count > 100, "readelf listed no imports either: \(symbols.prefix(5))")
    }

    /// The compiler's private functions have no names for the text order, and its merged
    /// functions (…Tm) have local names that recur across objects and prebuilt archives;
    /// scripts/private-text.ld groups both just before .text, where the ordered run begins.
    @Test("Private and merged functions (.text..L*, .text.*Tm) are grouped in .text.private, right before .text")
    func privateFunctionsGrouped() async throws {
        let grouped = try await Self.section(".text.private"), text = try await Self.section(".text")
        #expect(grouped.size > 16 << 10 && grouped.size < 512 << 10, "\(grouped.size) bytes of private functions")
        let merged = try await Self.symbols(ofTypes: "tT").filter { $0.name.hasSuffix("Tm") }.map(\.address)
        let mergedInside = merged.filter { $0 >= grouped.start && $0 < grouped.start + grouped.size }
        #expect(mergedInside.count > 1000, "\(mergedInside.count) of \(merged.count) merged functions in .text.private")
        #expect(text.start >= grouped.start + grouped.size && text.start - (grouped.start + grouped.size) < 4096,
                ".text.private does not end where .text begins")
    }

    /// glibc loads DT_RELR from 2.36 on (GLIBC_ABI_DT_RELR). dpkg-shlibdeps reads only
    /// versioned symbols and would say 2.35: scripts/package.sh raises the bound.
    @Test("Packed relative relocations (DT_RELR), and the package's Depends asks for the glibc that loads them")
    func packedRelocations() async throws {
        let dynamic = try await Self.run(["readelf", "-d", Self.binary])
        #expect(dynamic.contains("(RELR)"), "no DT_RELR: was the binary linked without lld's -z pack-relative-relocs?")
        let relocations = try await Self.run(["readelf", "-r", Self.binary])
        let relative = relocations.split(separator: "\n").filter { $0.contains("_RELATIVE") }.count
        #expect(relative < 1000, "\(relative) *_RELATIVE entries left in .rela.dyn")
        #expect(try await Self.run(["readelf", "-V", Self.binary]).contains("GLIBC_ABI_DT_RELR"))
        let depends = try await Self.run(["dpkg-deb", "--field", try DebianPackageTests.package(), "Depends"])
        let libc = try #require(depends.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .first { $0.hasPrefix("libc6 ") }, "no libc6 in Depends: \(depends)")
        let bound = libc.drop { $0 != "=" }.dropFirst().trimmingCharacters(in: CharacterSet(charactersIn: " )"))
        #expect(libc.contains(">="), "\(libc)")
        let compare = try await ProcessRunner.run(["dpkg", "--compare-versions", bound, "ge", "2.36"], timeout: 30)
        #expect(compare.status == 0, "Depends has \(libc); DT_RELR needs libc6 (>= 2.36)")
    }

    /// Without the order the 300 hottest functions are spread over the whole 13 MB .text (the
    /// order the objects happen to be linked in); with it they are in its first few hundred KB.
    @Test("The functions a running sidecar executes come first in .text (scripts/link-order.txt)")
    func executedCodeFirst() async throws {
        let order = try String(contentsOf: Self.root.appendingPathComponent("scripts/link-order.txt"), encoding: .utf8)
            .split(separator: "\n").filter { !$0.hasPrefix("#") }.map(String.init)
        #expect(order.count > 2000, "scripts/link-order.txt lists \(order.count) functions: regenerate it with scripts/link-order.sh")
        let address = Dictionary(try await Self.symbols(ofTypes: "tTwW").map { ($0.name, $0.address) }, uniquingKeysWith: { _, last in last })
        let (textStart, textSize) = try await Self.section(".text")
        #expect(textSize > 8 << 20, "the .text this test reasons about is over 8 MiB (it is \(textSize >> 20) MiB)")
        let hottest = order.prefix(300).compactMap { address[$0] }
        #expect(hottest.count > 250, "only \(hottest.count) of the 300 hottest listed functions exist: regenerate scripts/link-order.txt")
        let outside = hottest.filter { $0 >= textStart + (2 << 20) }
        #expect(outside.isEmpty, "\(outside.count) of the hottest functions lie beyond the first 2 MiB of .text")
    }

    /// The second part of the order file: the constants and variables a started sidecar touches.
    /// Unordered, they are spread over the whole of .rodata (the runtime's first conformance
    /// lookup reads every conformance descriptor) and .bss; ordered, .rodata's fill about its
    /// first fifth and .bss's its first half.
    @Test("The data a started sidecar touches come first in .rodata and .bss (scripts/link-order.txt)")
    func touchedDataFirst() async throws {
        let lines = try String(contentsOf: Self.root.appendingPathComponent("scripts/link-order.txt"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        let marker = try #require(lines.firstIndex { $0.hasPrefix("# Data") }, "no data part: regenerate scripts/link-order.txt")
        let listed = lines[(marker + 1)...].filter { !$0.hasPrefix("#") }
        #expect(listed.count > 2000, "\(listed.count) data names")
        let address = Dictionary(try await Self.symbols(ofTypes: "dDbBrR").map { ($0.name, $0.address) }, uniquingKeysWith: { first, _ in first })
        for (name, share) in [(".rodata", 0.3), (".bss", 0.6)] {
            let (start, size) = try await Self.section(name)
            let inside = listed.compactMap { address[$0] }.filter { $0 >= start && $0 < start + size }
            #expect(inside.count > (name == ".bss" ? 100 : 2000), "only \(inside.count) listed names in \(name)")
            let late = inside.filter { Double($0 - start) >= share * Double(size) }
            #expect(late.isEmpty, "\(late.count) of \(inside.count) listed names lie beyond the first \(Int(share * 100)) % of \(name)")
        }
    }
}
