// swift-tools-version:6.0
import PackageDescription

// Without -target-cpu haswell, fused multiply-add and Float16 conversion compile to software calls
// (measured 35x and 20x slower on the x86_64 machines this project is built on).
#if arch(x86_64)
let cpuFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
let cCPUFlags: [CSetting] = [.unsafeFlags(["-march=haswell"])]
#else
let cpuFlags: [SwiftSetting] = []
let cCPUFlags: [CSetting] = []
#endif
let swiftSettings = cpuFlags + [.swiftLanguageMode(.v5)]

let package = Package(
    name: "KVCapsule",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "KVCTensor", targets: ["KVCTensor"]),
        .library(name: "KVCGGUF", targets: ["KVCGGUF"]),
        .library(name: "KVCTokenizer", targets: ["KVCTokenizer"]),
        .library(name: "KVCBackbone", targets: ["KVCBackbone"]),
        .library(name: "KVCVision", targets: ["KVCVision"]),
        .library(name: "KVCCollect", targets: ["KVCCollect"]),
        .library(name: "KVCCapsule", targets: ["KVCCapsule"]),
        .library(name: "KVCBaselines", targets: ["KVCBaselines"]),
        .library(name: "KVCSmolVLM", targets: ["KVCSmolVLM"]),
        .library(name: "KVCReport", targets: ["KVCReport"]),
        .executable(name: "kvc-demo", targets: ["kvc-demo"]),
        .executable(name: "kvc-run", targets: ["kvc-run"]),
        .executable(name: "kvc-bench", targets: ["kvc-bench"]),
        .executable(name: "kvc-collect", targets: ["kvc-collect"]),
        .executable(name: "kvc-train", targets: ["kvc-train"]),
        .executable(name: "kvc-export", targets: ["kvc-export"]),
        .executable(name: "kvc-ablate", targets: ["kvc-ablate"]),
        .executable(name: "kvc-eval", targets: ["kvc-eval"]),
        .executable(name: "kvc-report", targets: ["kvc-report"]),
        .executable(name: "kvc-sweep", targets: ["kvc-sweep"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // System libraries (Debian: libopenblas-dev, libzstd-dev, libxxhash-dev, libpng-dev, libjpeg-dev).
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev", "libjpeg-dev"])]),

        // Shared plumbing: BLAS front door, float16, safetensors, atomic files, progress, RNG, errors.
        .target(name: "KVCCore", dependencies: ["CBLAS", "CXXHash", .product(name: "Yams", package: "Yams")], swiftSettings: swiftSettings),
        // Reverse-mode autodiff tensors, ops, optimizers.
        .target(name: "KVCTensor", dependencies: ["KVCCore"], swiftSettings: swiftSettings),
        // GGUF v3 reader with bounds checks and dequantization of its block formats.
        .target(name: "KVCGGUF", dependencies: ["KVCCore"], swiftSettings: swiftSettings),
        // Byte-level BPE tokenizer (vocabulary, merges, pre-tokenizer split, special tokens, chat template).
        .target(name: "KVCTokenizer", dependencies: ["KVCCore"], swiftSettings: swiftSettings),
        // AVX-512 tile kernels of batched decoding (C for per-function target attributes; chosen at run time).
        .target(name: "CDecodeKernels", cSettings: cCPUFlags + [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        // Frozen backbone: Llama decoder, KV cache protocol, generation.
        .target(name: "KVCBackbone", dependencies: ["KVCCore", "KVCTensor", "KVCGGUF", "KVCTokenizer", "CDecodeKernels"],
                swiftSettings: swiftSettings),
        // Images, easy-VQA, the vision front end and the VLM that joins it to the decoder.
        .target(name: "KVCVision", dependencies: ["KVCCore", "KVCTensor", "KVCTokenizer", "KVCBackbone", "KVCCollect", "CPNG"],
                swiftSettings: swiftSettings),

        // Collected KV caches: the shard format, its manifest, and the reader the trainer streams from.
        .target(name: "KVCCollect", dependencies: ["KVCCore"], swiftSettings: swiftSettings),
        // The collection driver: runs the frozen VLM over a data set and writes KVCCollect shards.
        .target(name: "KVCCollector", dependencies: ["KVCCore", "KVCCollect", "KVCVision", "KVCBackbone"],
                swiftSettings: swiftSettings),

        // KVCapsule: retention, key reconstruction, value PCA, byte budgets, and the capsule cache.
        .target(name: "KVCCapsule", dependencies: ["KVCCore", "KVCCollect", "KVCBackbone", "KVCTensor", "CZstd", "CDecodeKernels"], swiftSettings: swiftSettings),
        // Baselines at equal bytes (quantization, token dropping, H2O/SnapKV/FastV eviction, PCA) and the method catalog.
        .target(name: "KVCBaselines", dependencies: ["KVCCore", "KVCBackbone", "KVCCapsule", "KVCVision", "KVCCollector"],
                swiftSettings: swiftSettings),

        // Hugging Face SmolVLM / Idefics3 (and plain Llama) model directories: SigLIP tower, pixel-shuffle connector,
        // the backbone's decoder from safetensors, parity dumps against transformers.
        .target(name: "KVCSmolVLM", dependencies: ["KVCCore", "KVCGGUF", "KVCBackbone", "KVCVision", "KVCCollect", "KVCTokenizer"],
                swiftSettings: swiftSettings),

        // Results pages: comparison tables, verdicts and inline SVG plots from sweep, benchmark and training files.
        .target(name: "KVCReport", dependencies: ["KVCCore"], swiftSettings: swiftSettings),

        .executableTarget(name: "kvc-demo", dependencies: [
            "KVCTensor", "KVCVision", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-demo", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-run", dependencies: [
            "KVCBackbone", "KVCVision", "KVCSmolVLM", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-run", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-train", dependencies: [
            "KVCVision", "KVCCapsule", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-train", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-eval", dependencies: [
            "KVCVision", "KVCCapsule", "KVCCollector", "KVCBaselines", "KVCSmolVLM", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-eval", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-sweep", dependencies: [
            "KVCVision", "KVCBaselines", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-sweep", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-export", dependencies: [
            "KVCCapsule", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-export", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-ablate", dependencies: [
            "KVCCapsule", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-ablate", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-collect", dependencies: [
            "KVCCollector", "KVCSmolVLM", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-collect", swiftSettings: swiftSettings),
        .executableTarget(name: "kvc-bench", dependencies: [
            "KVCTensor", "KVCBackbone", "KVCCollector", "KVCCapsule", "KVCVision",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-bench", swiftSettings: swiftSettings),

        .executableTarget(name: "kvc-report", dependencies: [
            "KVCReport", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/Tools/kvc-report", swiftSettings: swiftSettings),

        .testTarget(name: "KVCReportTests", dependencies: ["KVCReport"], swiftSettings: swiftSettings),
        .testTarget(name: "KVCCoreTests", dependencies: ["KVCCore"], swiftSettings: swiftSettings),
        .testTarget(name: "KVCCollectTests", dependencies: ["KVCCollect"], swiftSettings: swiftSettings),
        .testTarget(name: "KVCCollectorTests", dependencies: ["KVCCollector"], swiftSettings: swiftSettings),
        .testTarget(name: "KVCCapsuleTests", dependencies: ["KVCCapsule"], swiftSettings: swiftSettings),
        // Kill/resume, numerical-fault, full-disk and fuzz tests (issue 9); the kill tests run the built executables.
        .testTarget(name: "KVCRobustnessTests", dependencies: ["KVCCore", "KVCTensor", "KVCCollect", "KVCCapsule", "KVCVision"],
                    swiftSettings: swiftSettings),
        .testTarget(name: "KVCBaselinesTests", dependencies: ["KVCBaselines"], swiftSettings: swiftSettings),
        .testTarget(name: "KVCTensorTests", dependencies: ["KVCTensor"], swiftSettings: swiftSettings),
        .testTarget(name: "KVCGGUFTests", dependencies: ["KVCGGUF"], resources: [.copy("Fixtures")], swiftSettings: swiftSettings),
        .testTarget(name: "KVCTokenizerTests", dependencies: ["KVCTokenizer", "KVCGGUF"],
                    resources: [.copy("Fixtures")], swiftSettings: swiftSettings),
        .testTarget(name: "KVCBackboneTests", dependencies: ["KVCBackbone"],
                    resources: [.copy("Fixtures")], swiftSettings: swiftSettings),
        .testTarget(name: "KVCSmolVLMTests", dependencies: ["KVCSmolVLM"], resources: [.copy("Fixtures")],
                    swiftSettings: swiftSettings),
        .testTarget(name: "KVCVisionTests", dependencies: ["KVCVision", "KVCTokenizer", "KVCGGUF"],
                    resources: [.copy("Fixtures")], swiftSettings: swiftSettings),
    ]
)
