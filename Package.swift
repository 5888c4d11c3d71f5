// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "backup-sidecar",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "backup-sidecar", targets: ["backup-sidecar"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Tests only: an HTTP/2 service built on a second, independent HTTP/2 implementation
        // for the http2/grpc L7 tests. It brings no TLS: every TLS connection and certificate
        // the binary makes goes through system OpenSSL (SidecarTLS).
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    ],
    targets: [
        // System OpenSSL 3. The shim header holds only `static inline` wrappers for
        // macros Swift cannot import, so no separate C target is needed.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // libnghttp2: the multiplexed transport between sidecars and HTTP/2 L7.
        .systemLibrary(
            name: "CNGHTTP2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        // libc extras Glibc does not export (malloc tuning); header only, nothing to link.
        .systemLibrary(name: "CSystemExtras"),
        // RE2 (Debian's libre2) behind a small C face: PathRegex and header Regex run in linear
        // time with RE2 semantics, as Consul's Envoy evaluates them. Linked from its static
        // archive on Linux: libre2.so would bring libstdc++.so and its symbol tables into every
        // sidecar (with the static libstdc++ of scripts/shipped-build.sh, about 0.7 MiB of idle
        // RSS); scripts/package.sh records the version in Static-Built-Using.
        .target(
            name: "CRE2",
            linkerSettings: [.unsafeFlags(["-Xlinker", "-l:libre2.a"], .when(platforms: [.linux])),
                             .linkedLibrary("re2", .when(platforms: [.macOS]))]
        ),
        // The pure models both the data plane and the dev agent use: config and its decoding,
        // intentions and L7 policy, Consul API shapes, SPIFFE IDs, JSON and timestamps. No I/O,
        // no NIO: Foundation, plus RE2 for the policy regexes (Consul's Envoy semantics).
        .target(
            name: "SidecarModel",
            dependencies: ["CRE2"]
        ),
        .target(
            name: "SidecarTLS",
            dependencies: [
                "SidecarModel",
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // HTTP/2 (nghttp2) carrying one tunnel per CONNECT stream, each stream a NIO Channel.
        .target(
            name: "SidecarMux",
            dependencies: [
                "CNGHTTP2",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // The one small HTTP/1.1 server: admin listener, dev agent, test stand-ins.
        .target(
            name: "SidecarHTTP",
            dependencies: [
                "SidecarModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .target(
            name: "SidecarCore",
            dependencies: [
                "SidecarModel",
                "SidecarHTTP",
                "SidecarTLS",
                "SidecarMux",
                "CSystemExtras",
                "CNGHTTP2",
                "CRE2",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // Consul mode: the HTTP API client, blocking-query watches and what they feed the Sidecar.
        .target(
            name: "ConsulAgent",
            dependencies: [
                "SidecarModel",
                "SidecarCore",
                "SidecarTLS",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The embedded dev control plane (`backup-sidecar dev-agent`): Consul's HTTP API and CA,
        // for development, the demo and tests. Production talks to a real Consul agent.
        .target(
            name: "DevAgent",
            dependencies: [
                "SidecarModel",
                "SidecarHTTP",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Records the git commit for `--version` and backup_sidecar_build_info.
        .plugin(name: "BuildInfo", capability: .buildTool()),
        .executableTarget(
            name: "backup-sidecar",
            dependencies: [
                "CSystemExtras",
                "ConsulAgent",
                "DevAgent",
                "SidecarCore",
                "SidecarModel",
                "SidecarMux",
                "SidecarTLS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            plugins: ["BuildInfo"]
        ),
        // bench/rotation.sh: echo backend and bulk + short-connection load with sha256 checks.
        .executableTarget(
            name: "mesh-load",
            dependencies: [
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // bench/intentions.sh: decisions per second with 1,000 intentions.
        .executableTarget(
            name: "intentions-microbench",
            dependencies: ["SidecarModel", "SidecarTLS"]
        ),
        // Fuzz targets (bench/fuzz.sh builds them with -sanitize=fuzzer -DFUZZING). In a normal
        // build each one replays the input files named on its command line.
        .systemLibrary(name: "CLibFuzzer", path: "Sources/Fuzz/CLibFuzzer"),
        .target(name: "FuzzSupport", dependencies: ["CLibFuzzer"], path: "Sources/Fuzz/FuzzSupport"),
        .executableTarget(name: "SPIFFEIDFuzz", dependencies: ["FuzzSupport", "SidecarModel"],
                          path: "Sources/Fuzz/SPIFFEIDFuzz"),
        .executableTarget(name: "ConfigDecodeFuzz", dependencies: ["FuzzSupport", "SidecarModel"],
                          path: "Sources/Fuzz/ConfigDecodeFuzz"),
        .executableTarget(name: "IntentionsFuzz", dependencies: ["FuzzSupport", "SidecarModel"],
                          path: "Sources/Fuzz/IntentionsFuzz"),
        .executableTarget(name: "PathNormalizerFuzz", dependencies: ["FuzzSupport", "SidecarModel"],
                          path: "Sources/Fuzz/PathNormalizerFuzz"),
        .executableTarget(name: "HTTPRequestFuzz",
                          dependencies: ["FuzzSupport", "SidecarCore", .product(name: "NIOHTTP1", package: "swift-nio")],
                          path: "Sources/Fuzz/HTTPRequestFuzz"),
        .executableTarget(name: "ProxyProtocolFuzz",
                          dependencies: ["FuzzSupport", "SidecarCore", .product(name: "NIOCore", package: "swift-nio")],
                          path: "Sources/Fuzz/ProxyProtocolFuzz"),
        // Shared by the test targets: awaited teardown, waiting on conditions, a seeded generator.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // The fixtures the end-to-end test targets share: meshes of real sidecars (file and
        // Consul mode), backends, third-party servers and clients, certificates, the binary.
        .target(
            name: "TestFixtures",
            dependencies: [
                "TestSupport",
                "ConsulAgent",
                "DevAgent",
                "SidecarCore",
                "SidecarHTTP",
                "SidecarModel",
                "SidecarMux",
                "SidecarTLS",
                "CNGHTTP2",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/TestFixtures"
        ),
        .testTarget(name: "SidecarModelTests", dependencies: ["SidecarModel", "TestSupport"]),
        .testTarget(
            name: "SidecarTLSTests",
            dependencies: [
                "SidecarModel",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "DevAgentTests",
            dependencies: [
                "DevAgent",
                "TestSupport",
                "SidecarModel",
                "SidecarTLS",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Consul mode against the dev agent and scripted agents: watches, ACL login, tenancy,
        // rotation, least-privilege tokens.
        .testTarget(
            name: "ConsulAgentTests",
            dependencies: [
                "TestSupport",
                "TestFixtures",
                "ConsulAgent",
                "DevAgent",
                "SidecarCore",
                "SidecarHTTP",
                "SidecarModel",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The shipped artefacts: the binary's command line, the Debian package, systemd units,
        // deploy/ files, the demo script, two hosts in network namespaces.
        .testTarget(
            name: "BackupSidecarTests",
            dependencies: [
                "TestSupport",
                "TestFixtures",
                "ConsulAgent",
                "DevAgent",
                "SidecarCore",
                "SidecarHTTP",
                "SidecarModel",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "SidecarCoreTests",
            dependencies: [
                "ConsulAgent",
                "TestSupport",
                "TestFixtures",
                "DevAgent",
                "SidecarCore",
                "SidecarHTTP",
                "SidecarModel",
                "SidecarMux",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                "CNGHTTP2",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6],
    cxxLanguageStandard: .cxx17
)
