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
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // System OpenSSL 3. The shim header holds only `static inline` wrappers for
        // macros Swift cannot import, so no separate C target is needed.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // Declared now for the HTTP/2 multiplexed transport (issue 6).
        .systemLibrary(
            name: "CNGHTTP2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        // libc extras Glibc does not export (malloc tuning); header only, nothing to link.
        .systemLibrary(name: "CSystemExtras"),
        .target(
            name: "SidecarTLS",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "SidecarCore",
            dependencies: [
                "SidecarTLS",
                "CSystemExtras",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "backup-sidecar",
            dependencies: [
                "CSystemExtras",
                "SidecarCore",
                "SidecarTLS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // bench/intentions.sh: decisions per second with 1,000 intentions.
        .executableTarget(
            name: "intentions-microbench",
            dependencies: ["SidecarCore", "SidecarTLS"]
        ),
        .testTarget(
            name: "SidecarTLSTests",
            dependencies: [
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SidecarCoreTests",
            dependencies: [
                "SidecarCore",
                "SidecarTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v5]
)
