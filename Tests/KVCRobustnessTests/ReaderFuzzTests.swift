import Foundation
import XCTest
import KVCCapsule
import KVCCollect
import KVCCore
import KVCTensor
import KVCVision

/// Seeded mutation fuzzing of the readers that had none: cache shards, cache manifests and YAML recipes (base,
/// front-end and capsule). Every mutant must be read or refused with a `KVCError` naming the file; a crash or a
/// hang fails the run. Seeds are real files (recipes/, a collected shard) and small synthetic ones.
/// `KVC_FUZZ_ITERATIONS` sets the mutants per reader (defaults keep each test to a few seconds).
final class ReaderFuzzTests: XCTestCase {
    private struct Tally: CustomStringConvertible {
        var mutants = 0, read = 0, refused = 0, items = 0
        var description: String { "\(mutants) mutants survived (read \(read), refused with an error \(refused), \(items) items decoded)" }
    }

    private let layout = CacheLayout(layers: 2, kvHeads: 1, queryHeads: 2, headDim: 4)

    private func syntheticSample(_ id: String, seed: UInt64) -> CacheSample {
        var rng = SeededRandom(seed: seed)
        let n = 4, t = 3
        func halves(_ count: Int) -> [UInt16] { HalfConversion.floatToHalf((0..<count).map { _ in rng.nextNormal() }) }
        let kv = layout.layers * layout.kvHeads * n * layout.headDim
        return CacheSample(id: id, grids: [ImageGrid(start: 0, rows: 2, cols: 2)], visionPositions: [5, 6, 7, 8],
                           textPositions: [9, 10, 11], keys: halves(kv), values: halves(kv),
                           queries: halves(layout.layers * layout.queryHeads * t * layout.headDim), info: ["question": "q?"])
    }

    /// A directory with two small shards and their manifest.
    private func syntheticCaches() throws -> String {
        let dir = try ChildProcess.temporaryDirectory("fuzz-caches")
        try CacheShard.write([syntheticSample("a", seed: 1), syntheticSample("b", seed: 2)],
                             skipped: [.init(id: "c", reason: "unreadable")], fingerprint: "fp", layout: layout,
                             shardIndex: 0, to: dir + "/" + CacheShard.fileName(index: 0))
        try CacheShard.write([syntheticSample("d", seed: 3)], skipped: [], fingerprint: "fp", layout: layout, shardIndex: 1,
                             to: dir + "/" + CacheShard.fileName(index: 1))
        try CacheManifest.build(directory: dir, source: ["task": "easy-vqa", "split": "train"]).write(directory: dir)
        return dir
    }

    /// Records how a mutant was handled: read, or refused with a KVCError that names `path`.
    private func attempt(_ path: String, _ tally: inout Tally, _ body: () throws -> Int) {
        tally.mutants += 1
        do {
            tally.items += try body()
            tally.read += 1
        } catch let error as KVCError {
            tally.refused += 1
            if !error.message.contains(path) { XCTFail("error does not name \(path): \(error.message)") }
        } catch {
            XCTFail("not a KVCError: \(error)")
        }
    }

    private func headerLength(_ bytes: [UInt8]) -> Int {
        bytes.count >= 8 ? Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }) : 0
    }

    // MARK: Cache shards

    func testCacheShardReaderSurvivesMutants() throws {
        let synthetic = try syntheticCaches()
        var seeds = [Array(try Data(contentsOf: URL(fileURLWithPath: synthetic + "/" + CacheShard.fileName(index: 0))))]
        // A real shard of the collector when the model is here (its header is the interesting part; it is 4 MB).
        if FileManager.default.fileExists(atPath: ChildProcess.model) {
            let real = try TinyRuns.sharedCaches() + "/" + CacheShard.fileName(index: 0)
            seeds.append(Array(try Data(contentsOf: URL(fileURLWithPath: real))))
        }
        let dir = try ChildProcess.temporaryDirectory("fuzz-shard")
        let path = dir + "/" + CacheShard.fileName(index: 0)
        var mutator = Mutator(rng: SeededRandom(seed: 0x5AAD))
        var tally = Tally()
        let total = Mutator.iterations(default: 1000)
        for i in 0..<total {
            // One in ten mutants of the real shard: each costs a 4 MB write.
            let seed = seeds.count > 1 && i % 10 == 9 ? seeds[1] : seeds[0]
            var bytes = seed
            mutator.mutate(&bytes, hot: 8 + headerLength(seed))
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            attempt(path, &tally) {
                let reader = try CacheShard.Reader(path: path)
                var decoded = 0
                for k in 0..<reader.count {
                    let sample = try reader.sample(k)
                    XCTAssertNoThrow(try sample.validate(against: reader.header.layout))
                    decoded += 1
                }
                return decoded
            }
        }
        XCTAssertGreaterThan(tally.refused, total / 4, "the mutations hardly ever broke the file: are they applied?")
        print("fuzz cache shard reader: \(tally)")
    }

    // MARK: Manifests

    func testCacheManifestAndStoreSurviveMutants() throws {
        let dir = try syntheticCaches()
        let manifestPath = dir + "/" + CacheManifest.fileName
        let seed = try String(contentsOfFile: manifestPath, encoding: .utf8)
        var mutator = Mutator(rng: SeededRandom(seed: 0x3A41))
        var tally = Tally()
        let total = Mutator.iterations(default: 1500)
        for i in 0..<total {
            let text: String
            if i % 2 == 0 {
                text = mutator.mutateText(seed)
            } else {
                var bytes = Array(seed.utf8)
                mutator.mutate(&bytes, hot: bytes.count)
                text = String(decoding: bytes, as: UTF8.self)
            }
            try text.write(toFile: manifestPath, atomically: false, encoding: .utf8)
            attempt(dir, &tally) {
                let store = try CacheStore(directory: dir, verifyChecksums: true)
                var n = 0
                // Trainers index samples with the manifest's layout: every sample handed out must fit it.
                try store.forEachSample { sample in
                    XCTAssertNoThrow(try sample.validate(against: store.manifest.layout), "a sample does not fit the manifest's layout")
                    n += 1
                }
                XCTAssertEqual(n, store.count, "the manifest's sample_count differs from the samples read")
                return n
            }
        }
        XCTAssertGreaterThan(tally.refused, total / 4)
        print("fuzz cache manifest + store: \(tally)")
    }

    // MARK: Training state and front-end checkpoints

    func testTrainingCheckpointRestoreSurvivesMutants() throws {
        var rng = SeededRandom(seed: 4)
        let model = MLP(sizes: [8, 16, 4], rng: &rng)
        let optimizer = AdamW(parameters: model.parameters)
        // One step, so the moments are not all zero.
        let x = Tensor.randn([4, 8], rng: &rng)
        mseLoss(model(x), Tensor.randn([4, 4], rng: &rng)).backward()
        optimizer.step()
        let dir = try ChildProcess.temporaryDirectory("fuzz-state")
        let path = dir + "/state.safetensors"
        try TrainingCheckpoint(step: 1, parameters: model.namedParameters, optimizers: ["adamw": optimizer],
                               random: ["order": rng], metadata: ["k": "v"]).save(to: path)
        let seed = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        var mutator = Mutator(rng: SeededRandom(seed: 0x57A7))
        var tally = Tally()
        let total = Mutator.iterations(default: 1500)
        for _ in 0..<total {
            var bytes = seed
            mutator.mutate(&bytes, hot: 8 + headerLength(seed))
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            var target = SeededRandom(seed: 9)
            let fresh = MLP(sizes: [8, 16, 4], rng: &target)
            let freshOptimizer = AdamW(parameters: fresh.parameters)
            let before = fresh.parameters.flatMap(\.scalars)
            let readBefore = tally.read
            attempt(path, &tally) {
                let restored = try TrainingCheckpoint.restore(from: path, parameters: fresh.namedParameters,
                                                              optimizers: ["adamw": freshOptimizer])
                XCTAssertEqual(fresh.parameters.flatMap(\.scalars), model.parameters.flatMap(\.scalars),
                               "a mutant restored other parameters than were saved (checksum missed it)")
                return restored.step >= 0 ? 1 : 0
            }
            if tally.read == readBefore {
                XCTAssertEqual(fresh.parameters.flatMap(\.scalars), before, "a refused checkpoint modified the parameters")
            }
        }
        XCTAssertGreaterThan(tally.refused, total / 2)
        print("fuzz training checkpoint restore: \(tally)")
    }

    func testFrontEndCheckpointLoaderSurvivesMutants() throws {
        let seed = Array(try Data(contentsOf: URL(fileURLWithPath: TinyRuns.frontEnd)))
        let dir = try ChildProcess.temporaryDirectory("fuzz-frontend")
        let path = dir + "/frontend.safetensors"
        var mutator = Mutator(rng: SeededRandom(seed: 0xF0E1))
        var tally = Tally()
        let total = Mutator.iterations(default: 1000)   // each mutant is a 2.7 MB file
        for _ in 0..<total {
            var bytes = seed
            mutator.mutate(&bytes, hot: 8 + headerLength(seed))
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            attempt(path, &tally) {
                let frontEnd = try FrontEnd.load(from: path)
                return frontEnd.tokensPerImage > 0 ? 1 : 0
            }
        }
        XCTAssertGreaterThan(tally.refused, total / 2)
        print("fuzz front-end checkpoint loader: \(tally)")
    }

    // MARK: Recipes

    func testRecipeReadersSurviveMutants() throws {
        let recipes = ChildProcess.packageRoot + "/recipes"
        let names = try FileManager.default.contentsOfDirectory(atPath: recipes).filter { $0.hasSuffix(".yaml") }.sorted()
        XCTAssertTrue(names.contains("frontend-easyvqa.yaml") && names.contains { $0.hasPrefix("capsule") }, "\(names)")
        let seeds = try names.map { try String(contentsOfFile: recipes + "/" + $0, encoding: .utf8) }
        let file = "mutant.yaml"
        var mutator = Mutator(rng: SeededRandom(seed: 0x7EC1))
        var tally = Tally()
        var accepted: [String: Int] = [:]
        let total = Mutator.iterations(default: 4000)
        for i in 0..<total {
            let text = mutator.mutateText(seeds[i % seeds.count])
            attempt(file, &tally) {
                let recipe = try RecipeSection.parse(text, file: file)
                switch try recipe.string("kind", allowed: ["front-end", "capsule"]) {
                case "capsule": _ = try CapsuleRecipe(recipe, text: text)
                default: _ = try FrontEndRecipe(recipe)
                }
                accepted[try recipe.string("kind"), default: 0] += 1
                return 1
            }
        }
        XCTAssertGreaterThan(tally.refused, total / 4)
        XCTAssertGreaterThan(accepted.values.reduce(0, +), 0, "no mutant was a valid recipe: the seeds do not parse?")
        print("fuzz recipes (RecipeSection + FrontEndRecipe + CapsuleRecipe): \(tally), valid after mutation: \(accepted)")
    }

    /// Alias expansion ("billion laughs") must not blow up memory or time.
    func testRecipeWithExponentialAliasesIsBounded() throws {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for level in 1...8 { text += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ") + "]\n" }
        text += "kind: capsule\n"
        let start = Date()
        XCTAssertThrowsError(try RecipeSection.parse(text, file: "laughs.yaml").finish()) { error in
            XCTAssertTrue("\(error)".contains("laughs.yaml"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5, "alias expansion took too long")
    }
}
