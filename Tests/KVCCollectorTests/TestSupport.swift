import Foundation
import XCTest
import KVCBackbone
import KVCCore
@testable import KVCCollector
import KVCVision

enum TestSupport {
    /// `$KVC_ASSETS`, else `assets/` at the package root; fails clearly when a needed file is missing.
    static func assets(_ relative: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let root: String
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty {
            root = env
        } else {
            root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("assets").path
        }
        let path = root + "/" + relative
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("\(path) missing: run scripts/setup.sh or set KVC_ASSETS", file: file, line: line)
            throw XCTSkip("asset missing")
        }
        return path
    }

    static func easyVQA() throws -> EasyVQA { try EasyVQA(root: assets("easy-vqa")) }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var sharedVLM: VisionLanguageModel?

    /// The real SmolLM2 decoder with a randomly initialised front end (collection does not care whether the front
    /// end is trained), loaded once per test process.
    static func vlm() throws -> VisionLanguageModel {
        lock.lock()
        defer { lock.unlock() }
        if let sharedVLM { return sharedVLM }
        let backbone = try Backbone(path: assets("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        var rng = SeededRandom(seed: 5)
        let frontEnd = FrontEnd(encoder: try VisionEncoder(rng: &rng),
                                projector: Projector(inputDim: 128, hiddenDim: 64, outputDim: backbone.model.config.hiddenSize,
                                                     outputScale: 0.5, rng: &rng))
        let vlm = try VisionLanguageModel(backbone: backbone, frontEnd: frontEnd)
        sharedVLM = vlm
        return vlm
    }

    static func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "kvc-collector-tests-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func source(_ plan: CollectionPlan, imagesPerPrompt: Int = 1, seed: UInt64 = 0) -> [String: String] {
        ["task": "easy-vqa", "split": "train", "images_per_prompt": String(imagesPerPrompt), "seed": String(seed),
         "samples_per_shard": String(plan.samplesPerShard)]
    }
}
