import Foundation
import XCTest
@testable import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCapsule

/// The fused attention path against the dense rebuild of the same capsule, on the real SmolLM2 decoder with two
/// smooth 8x8 "images" (embeddings varying smoothly over each grid) between text tokens.
final class FusedAttentionTests: XCTestCase {
    private func realModel() throws -> LlamaModel {
        do { return try RealModel.shared() } catch {
            XCTFail("\(error)")
            throw error
        }
    }

    /// Prompt: 3 tokens, image A (positions 3..<67), 4 tokens, image B (71..<135), 6 tokens.
    private let gridsAtPositions = [ImageGrid(start: 3, rows: 8, cols: 8), ImageGrid(start: 71, rows: 8, cols: 8)]
    private var spanGrids: [ImageGrid] { [ImageGrid(start: 0, rows: 8, cols: 8), ImageGrid(start: 64, rows: 8, cols: 8)] }
    private var visionPositions: [Int32] { gridsAtPositions.flatMap { g in (g.start..<(g.start + g.count)).map { Int32($0) } } }

    private func prompt(_ model: LlamaModel) throws -> [PromptPiece] {
        func image(_ ids: [Int]) throws -> [Float] {
            let a = try model.embed(tokens: [ids[0]]), b = try model.embed(tokens: [ids[1]]), c = try model.embed(tokens: [ids[2]])
            var out: [Float] = []
            for r in 0..<8 {
                for col in 0..<8 {
                    let u = Float(r) / 7, v = Float(col) / 7
                    out += (0..<a.count).map { (1 - u) * a[$0] + u * (1 - v) * b[$0] + u * v * c[$0] }
                }
            }
            return out
        }
        return [.tokens([1, 504, 3458]), .embeddings(try image([1000, 2000, 3000]), count: 64), .tokens([314, 260, 9690, 30]),
                .embeddings(try image([4000, 1500, 2500]), count: 64), .tokens([2713, 2838, 288, 253, 1834, 30])]
    }

    /// A linear key reconstructor fitted on this prompt's own keys (what `kvc-train` does over many prompts).
    private func fittedReconstructor(_ model: LlamaModel, budget: CapsuleBudget) throws -> LinearKeyReconstructor {
        let c = model.config, d = c.headDim
        let cache = model.makeCache(precision: .float32)
        _ = try model.forward(prompt(model), cache: cache)
        let plan = budget.plan(tokens: visionPositions.count, headDim: d)
        let neighbours = GridNeighbours(grids: spanGrids, keep: RetentionPolicy.strided.mask(grids: spanGrids, kept: plan.keptKeys),
                                        count: 4)
        var fit = LinearKeyReconstructorFit(layers: c.layerCount, kvHeads: c.kvHeadCount, headDim: d, rope: model.rope)
        for l in 0..<c.layerCount {
            cache.withLayer(l) { view in
                guard case .float32(let keys, _) = view.storage else { return XCTFail("float32 cache expected") }
                for h in 0..<c.kvHeadCount {
                    let span = visionPositions.flatMap { p in Array(UnsafeBufferPointer(start: keys + h * view.headStride + Int(p) * d, count: d)) }
                    span.withUnsafeBufferPointer {
                        fit.add(layer: l, head: h, keys: $0.baseAddress!, positions: visionPositions, neighbours: neighbours)
                    }
                }
            }
        }
        return fit.solve()
    }

    private func compressedCache(_ model: LlamaModel, keys: KeyReconstruction, budget: CapsuleBudget,
                                 mode: CapsuleAttentionMode) throws -> CapsuleCache {
        let cache = CapsuleCache(config: model.config, rope: model.rope,
                                 settings: CapsuleSettings(budget: budget, keys: keys, mode: mode))
        _ = try model.forward(prompt(model), cache: cache, logits: .none)
        try cache.compress(imageGridsAtPositions: gridsAtPositions)
        return cache
    }

    /// Attention outputs of every layer, fused against dense, for each way of rebuilding keys, two budgets and int8
    /// storage (one and two query rows).
    func testFusedAttentionEqualsDenseRebuild() throws {
        let model = try realModel()
        let c = model.config
        let budget6 = CapsuleBudget(ratio: 0.6, keyRatio: 0.5), budget8 = CapsuleBudget(ratio: 0.8, keyRatio: 0.75)
        let linear6 = KeyReconstruction.linear(try fittedReconstructor(model, budget: budget6))
        let int8 = CapsuleBudget(ratio: 0.6, keyRatio: 0.75, keyPrecision: .int8, valuePrecision: .int8)
        let cases: [(String, KeyReconstruction, CapsuleBudget)] = [
            ("linear r=0.6", linear6, budget6),
            ("linear r=0.6, int8 keys and values", linear6, int8),
            // Value rank 16: the fused path reads the factors directly (whole SIMD chunks) instead of through BLAS.
            ("linear, value rank 16", linear6, CapsuleBudget(ratio: 0.55, keyRatio: 0.5)),
            ("linear r=0.8", .linear(try fittedReconstructor(model, budget: budget8)), budget8),
            ("nearest", .nearest, budget6), ("evict", .evict, budget6),
        ]
        var rng = SeededRandom(seed: 7)
        var ranks = Set<Int>()
        defer { XCTAssertTrue(ranks.contains { $0 % 8 == 0 } && ranks.contains { $0 % 8 != 0 }, "value ranks \(ranks): both paths") }
        for (name, keys, budget) in cases {
            let fused = try compressedCache(model, keys: keys, budget: budget, mode: .fused)
            let dense = try compressedCache(model, keys: keys, budget: budget, mode: .dense)
            ranks.insert(fused.capsule!.layers[0]!.heads[0].values!.rank)
            for rows in [1, 2] {
                let width = c.headCount * c.headDim
                let queries = (0..<(rows * width)).map { _ in rng.nextNormal() * 2 }
                for layer in [0, 7, 29] {
                    var a = [Float](repeating: 0, count: rows * width), b = a
                    let took = queries.withUnsafeBufferPointer { q in
                        a.withUnsafeMutableBufferPointer {
                            fused.attend(layer: layer, queries: q.baseAddress!, count: rows, firstPosition: fused.length,
                                         headCount: c.headCount, output: $0.baseAddress!, threads: 2)
                        }
                    }
                    XCTAssertTrue(took, "\(name): the fused cache takes the call")
                    let declined = queries.withUnsafeBufferPointer { q in
                        b.withUnsafeMutableBufferPointer {
                            dense.attend(layer: layer, queries: q.baseAddress!, count: rows, firstPosition: dense.length,
                                         headCount: c.headCount, output: $0.baseAddress!, threads: 2)
                        }
                    }
                    XCTAssertFalse(declined, "\(name): dense mode leaves attention to the shared kernel")
                    queries.withUnsafeBufferPointer { q in
                        b.withUnsafeMutableBufferPointer {
                            dense.attention(layer: layer, queries: q.baseAddress!, count: rows, firstPosition: dense.length,
                                            headCount: c.headCount, output: $0.baseAddress!, threads: 2)
                        }
                    }
                    let error = zip(a, b).reduce(Float(0)) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }.squareRoot()
                    let norm = b.reduce(Float(0)) { $0 + $1 * $1 }.squareRoot()
                    XCTAssertGreaterThan(norm, 0)
                    XCTAssertLessThan(error / norm, 1e-4, "\(name), layer \(layer), \(rows) rows: relative error \(error / norm)")
                }
            }
        }
    }

    /// Greedy generation after compression (a 6-token question prefilled over the capsule, then decoding) gives the same
    /// tokens in both modes; the fused cache keeps no scratch.
    func testFusedGenerationEqualsDense() throws {
        let model = try realModel()
        let budget = CapsuleBudget(ratio: 0.6, keyRatio: 0.5)
        let keys = KeyReconstruction.linear(try fittedReconstructor(model, budget: budget))
        func generate(_ mode: CapsuleAttentionMode) throws -> (tokens: [Int], logits: [[Float]], cache: CapsuleCache) {
            let cache = try compressedCache(model, keys: keys, budget: budget, mode: mode)
            var logits = try model.forward(tokens: [9690, 30, 2713, 2838, 288, 253], cache: cache)
            var tokens: [Int] = [], all: [[Float]] = [logits]
            for _ in 0..<6 {
                tokens.append(logits.withUnsafeBufferPointer { Sampler.argmax($0) })
                logits = try model.forward(tokens: [tokens.last!], cache: cache)
                all.append(logits)
            }
            return (tokens, all, cache)
        }
        let fused = try generate(.fused), dense = try generate(.dense)
        XCTAssertEqual(fused.tokens, dense.tokens)
        for (a, b) in zip(fused.logits, dense.logits) {
            let worst = zip(a, b).map { abs($0 - $1) }.max()!, top = b.map(abs).max()!
            // Attention outputs agree to ~1e-6 per layer (test above); through 30 layers and the float16 rounding of
            // each new key and value, logits agree to ~1e-4 of their range.
            XCTAssertLessThan(worst / top, 1e-3, "max |Δlogit| \(worst)")
        }
        XCTAssertLessThan(fused.cache.residentBytes, dense.cache.residentBytes, "fused mode allocates no dense scratch")
        XCTAssertEqual(fused.cache.visionBytes, dense.cache.visionBytes)
    }

    /// A batch mixing a fused capsule, a dense capsule and a plain cache decodes as each does alone.
    func testBatchOfCapsuleAndPlainCachesEqualsSingleStream() throws {
        let model = try realModel()
        let budget = CapsuleBudget(ratio: 0.6, keyRatio: 0.5)
        func caches() throws -> [KVCache] {
            let plain = model.makeCache()
            _ = try model.forward(prompt(model), cache: plain, logits: .none)
            return [try compressedCache(model, keys: .nearest, budget: budget, mode: .fused),
                    try compressedCache(model, keys: .nearest, budget: budget, mode: .dense), plain]
        }
        let tokens = [[9690, 30, 2713], [288, 253, 1834], [30, 504, 3458]]
        let alone = try caches(), together = try caches()
        let vocab = model.config.vocabularySize
        for step in 0..<3 {
            let batched = try model.decodeStep(tokens: tokens.map { $0[step] }, caches: together)
            for s in 0..<3 {
                let single = try model.forward(tokens: [tokens[s][step]], cache: alone[s])
                XCTAssertEqual(Array(batched[(s * vocab)..<((s + 1) * vocab)]), single, "sequence \(s), step \(step)")
            }
        }
    }
}
