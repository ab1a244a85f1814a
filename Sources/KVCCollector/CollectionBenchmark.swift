import Dispatch
import Foundation
import KVCBackbone
import KVCCollect
import KVCCore
import KVCVision

/// What collecting costs next to the VLM's plain prefill of the same prompts (`kvc-bench collect` prints it).
///
/// Passes over the same prompts, alternated so that other load on the machine hits them alike, best of `repeats`:
/// - `plain prefill`: front end + one forward over the prompt into a fresh float16 cache (last position's logits);
/// - `prefill + answer token`: the same, then the first answer token's single-token step (what generation does
///   before it can produce a second token);
/// - `collect (memory)`: `SampleCollector.collect`, i.e. the above with the query observer and the K/V copies;
/// - `collect (shards)`: `CacheCollector.run` into an empty directory: image reads, shard writes (fsync'd),
///   manifest rebuild with checksums.
public enum CollectionBenchmark {
    public struct Figure: Codable, Sendable {
        public var name: String
        public var promptsPerSecond: Double
        /// Prompts per second of process CPU time (all threads): robust to other processes sharing the cores.
        public var promptsPerCPUSecond: Double
        /// Wall-clock throughput relative to `plain prefill` (1 = as fast).
        public var relativeToPlainPrefill: Double
    }

    /// The decoder with a front end: the checkpoint at `frontEndPath`, or (nil) a randomly initialised one of the
    /// default shape, since collection costs the same whatever the weights.
    public static func loadVLM(modelPath: String, frontEndPath: String?) throws -> VisionLanguageModel {
        if let frontEndPath { return try VisionLanguageModel.load(modelPath: modelPath, frontEndPath: frontEndPath) }
        let backbone = try Backbone(path: modelPath)
        var rng = SeededRandom(seed: 1)
        let encoder = try VisionEncoder(rng: &rng)
        return try VisionLanguageModel(backbone: backbone, frontEnd: FrontEnd(
            encoder: encoder, projector: Projector(inputDim: encoder.config.tokenDim, hiddenDim: 512,
                                                   outputDim: backbone.model.config.hiddenSize, outputScale: 0.5, rng: &rng)))
    }

    /// The first `prompts` prompts of the easy-VQA train plan, two shards' worth.
    public static func easyVQAPlan(root: String, prompts: Int, imagesPerPrompt: Int) throws -> CollectionPlan {
        try CollectionPlan.easyVQA(EasyVQA(root: root), split: .train, imagesPerPrompt: imagesPerPrompt, limit: prompts,
                                   samplesPerShard: max(1, (prompts + 1) / 2))
    }

    public static func run(vlm: VisionLanguageModel, plan: CollectionPlan, repeats: Int, scratch: String) throws -> [Figure] {
        precondition(repeats >= 1, "CollectionBenchmark.run: repeats must be >= 1")
        let model = vlm.backbone.model
        var images: [[Image]] = []
        for item in plan.items { images.append(try item.imagePaths.map { try Image.load(path: $0) }) }
        let answerTokens = plan.items.map { vlm.prompt.answer($0.answer, tokenizer: vlm.backbone.tokenizer).first ?? 0 }

        func plain(withAnswerToken: Bool) throws {
            for (i, item) in plan.items.enumerated() {
                let prefix = vlm.prefix(imageEmbeddings: try vlm.imageEmbeddings(images[i], question: item.question))
                let cache = model.makeCache()
                _ = try model.forward(prefix.pieces + vlm.suffix(question: item.question), cache: cache)
                if withAnswerToken { _ = try model.forward(tokens: [answerTokens[i]], cache: cache, logits: .none) }
            }
        }
        let collector = SampleCollector(vlm: vlm)
        func collectInMemory() throws {
            for (i, item) in plan.items.enumerated() {
                _ = try collector.collect(id: item.id, images: images[i], question: item.question, answer: item.answer)
            }
        }
        var run = 0
        func collectShards() throws {
            let dir = scratch + "/run-\(run)"
            run += 1
            defer { try? FileManager.default.removeItem(atPath: dir) }
            _ = try CacheCollector(vlm: vlm, fingerprint: "benchmark").run(
                plan: plan, directory: dir, source: ["task": "benchmark"], progress: false)
        }

        let passes: [(String, () throws -> Void)] = [
            ("plain prefill", { try plain(withAnswerToken: false) }),
            ("prefill + answer token", { try plain(withAnswerToken: true) }),
            ("collect (memory)", collectInMemory),
            ("collect (shards)", collectShards),
        ]
        try plain(withAnswerToken: false)   // warm-up: first-touch of weights and buffers
        var best = [(wall: Double, cpu: Double)](repeating: (.infinity, .infinity), count: passes.count)
        for _ in 0..<repeats {
            for (p, pass) in passes.enumerated() {
                let wall0 = DispatchTime.now(), cpu0 = processCPUSeconds()
                try pass.1()
                let wall = Double(DispatchTime.now().uptimeNanoseconds - wall0.uptimeNanoseconds) / 1e9
                best[p] = (min(best[p].wall, wall), min(best[p].cpu, processCPUSeconds() - cpu0))
            }
        }
        let n = Double(plan.items.count)
        return passes.indices.map { p in
            Figure(name: passes[p].0, promptsPerSecond: n / best[p].wall, promptsPerCPUSecond: n / best[p].cpu,
                   relativeToPlainPrefill: best[0].wall / best[p].wall)
        }
    }
}

/// User + system CPU seconds of this process, all threads.
public func processCPUSeconds() -> Double {
    var usage = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &usage)
    #else
    getrusage(RUSAGE_SELF, &usage)
    #endif
    func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return s(usage.ru_utime) + s(usage.ru_stime)
}
