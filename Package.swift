// swift-tools-version:6.0
import PackageDescription

// Dependencies point inward: BatonCore is pure (standard library only);
// BatonFUSE wraps libfuse and knows nothing of Baton; BatonRuntime is the IO
// shell; the executable only parses arguments and wires parts together.
let package = Package(
    name: "baton",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "baton", targets: ["baton"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
    ],
    targets: [
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CLinuxExtras"),
        .target(name: "BatonCore"),
        .target(name: "BatonFUSE", dependencies: ["CFuse3"]),
        .target(
            name: "BatonRuntime",
            dependencies: [
                "BatonCore", "CLinuxExtras",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
            ]),
        .target(
            name: "BatonServer",
            dependencies: [
                "BatonCore", "BatonRuntime",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        .target(name: "BatonClient", dependencies: ["BatonCore", "BatonRuntime", "BatonFUSE"]),
        .target(
            name: "BatonAgent",
            dependencies: [
                "BatonCore", "BatonRuntime", "CLinuxExtras",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        .executableTarget(
            name: "baton",
            dependencies: [
                "BatonServer", "BatonClient", "BatonRuntime", "BatonAgent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // The core's tests make their authenticator with swift-crypto too (the core has none).
        .testTarget(name: "BatonCoreTests", dependencies: ["BatonCore", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(
            name: "BatonIntegrationTests",
            dependencies: [
                "BatonCore", "BatonRuntime",
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]),
    ]
)
