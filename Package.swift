// swift-tools-version:6.0
// The architecture of Concord: every target depends only on the targets listed above it.
import PackageDescription

let package = Package(
    name: "Concord",
    products: [
        .library(name: "Concord", targets: ["Concord"]),
        .executable(name: "concord", targets: ["ConcordLauncher"]),
        .executable(name: "concord-bench", targets: ["ConcordBench"]),
        .executable(name: "concord-train", targets: ["ConcordTrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // libuv from the system (Debian: libuv1-dev). Only ConcordUV imports it.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        // Vocabulary: ranks, dtypes, ops, deadlines, errors, frame header, Transport protocol. No Foundation.
        .target(name: "ConcordCore"),
        // The CPU guard: refuses, before main, to run a build made for a newer CPU (-Xcc -march=...).
        .target(name: "CConcordCPU"),
        // Pure reduce and convert kernels (SIMD), and the Swift face of the CPU guard.
        .target(name: "ConcordKernels", dependencies: ["ConcordCore", "CConcordCPU"]),
        // Ring schedule and collectives, written against `Transport`.
        .target(name: "ConcordCollectives", dependencies: ["ConcordKernels", "ConcordCore"]),
        // Atomics on shared memory (acquire/release/fence on a word another process maps), for ConcordUV's
        // shared-memory channel between ranks on one host. Only ConcordUV imports it.
        .target(name: "CConcordShm"),
        // Zero-copy sends (vmsplice/splice, which Swift's Glibc does not expose). Only ConcordUV imports it.
        .target(name: "CConcordSplice"),
        // The libuv transport: loop thread, TCP links, frames, the rendezvous store, the shared-memory channel.
        .target(name: "ConcordUV", dependencies: ["ConcordCore", "CLibUV", "CConcordShm", "CConcordSplice"]),
        // The public face: Communicator.
        .target(
            name: "Concord",
            dependencies: ["ConcordCollectives", "ConcordKernels", "ConcordUV", "ConcordDiscovery", "ConcordCore"]),
        // Discovery logic, pure: beacons, job secret and handshake, membership agreement, ring order, interfaces.
        .target(
            name: "ConcordDiscovery", dependencies: ["ConcordCore", .product(name: "Crypto", package: "swift-crypto")]),
        // The demo trainer's model and data: SIMD matrix code, an MLP, synthetic digits, IDX files. Pure; no Concord dependency.
        .target(name: "ConcordML"),
        // Test seams: in-memory transport, rank-spawning helpers, distinct-value fixtures.
        .target(name: "ConcordTestSupport", dependencies: ["ConcordCore"]),
        .executableTarget(
            name: "ConcordLauncher",
            dependencies: [
                "CConcordCPU", "Concord", "ConcordCore", "ConcordDiscovery",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "ConcordBench",
            dependencies: [
                "Concord", "ConcordUV", "ConcordTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/ConcordBench"),
        // The demo trainer: an image classifier trained data-parallel with GradientSynchronizer.
        .executableTarget(
            name: "ConcordTrain",
            dependencies: [
                "Concord", "ConcordML", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "ConcordCoreTests", dependencies: ["ConcordCore"]),
        .testTarget(name: "ConcordKernelsTests", dependencies: ["ConcordKernels", "CConcordCPU", "ConcordTestSupport"]),
        .testTarget(name: "ConcordCollectivesTests", dependencies: ["ConcordCollectives", "ConcordTestSupport"]),
        .testTarget(name: "ConcordUVTests", dependencies: ["Concord", "ConcordUV", "ConcordTestSupport"]),
        .testTarget(name: "ConcordLauncherTests", dependencies: ["ConcordTestSupport"]),
        .testTarget(name: "ConcordDiscoveryTests", dependencies: ["ConcordDiscovery", "ConcordCore", "ConcordTestSupport"]),
        .testTarget(name: "ConcordIntegrationTests", dependencies: ["ConcordTestSupport"]),
        .testTarget(name: "ConcordMLTests", dependencies: ["ConcordML"]),
    ]
)
