import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCapsule

/// Score-based retention: the mask (top scores with coverage), the scores (attention of the question's queries), and the
/// capsule cache compressing a scored layer when the question reaches it.
final class ScoredRetentionTests: XCTestCase {
    /// Every cell of `size` x `size` keeps a token, and every kept token is its cell's best or scores at least as much
    /// as every dropped token.
    private func checkCoverageAndTopScores(_ keep: [Bool], grids: [ImageGrid], scores: [Float], size: Int, kept: Int,
                                           line: UInt = #line) {
        XCTAssertEqual(keep.filter { $0 }.count, kept, line: line)
        let dropped = keep.indices.filter { !keep[$0] }.map { scores[$0] }.max() ?? -.infinity
        for g in grids {
            for r0 in stride(from: 0, to: g.rows, by: size) {
                for c0 in stride(from: 0, to: g.cols, by: size) {
                    let cell = (r0..<min(r0 + size, g.rows)).flatMap { r in (c0..<min(c0 + size, g.cols)).map { g.start + r * g.cols + $0 } }
                    XCTAssertTrue(cell.contains { keep[$0] }, "cell (\(r0),\(c0)) of \(size)x\(size) has no kept token", line: line)
                    let best = cell.max { (scores[$0], -$0) < (scores[$1], -$1) }!
                    for i in cell where keep[i] && i != best {
                        XCTAssertGreaterThanOrEqual(scores[i], dropped, "token \(i) is kept beyond coverage with a lower score",
                                                    line: line)
                    }
                }
            }
        }
    }

    func testScoredMaskKeepsTheTopScoresAfterCoverage() {
        var rng = SeededRandom(seed: 11)
        let grids = [ImageGrid(start: 0, rows: 8, cols: 8), ImageGrid(start: 64, rows: 4, cols: 4)]
        for kept in [20, 30, 47, 79] {
            let scores = (0..<80).map { _ in rng.nextNormal() }
            let keep = RetentionPolicy.scored.mask(grids: grids, kept: kept, scores: scores)
            checkCoverageAndTopScores(keep, grids: grids, scores: scores, size: 2, kept: kept)
            // The most attended token is always kept.
            XCTAssertTrue(keep[scores.indices.max { scores[$0] < scores[$1] }!])
        }
        // Fewer kept tokens than 2x2 cells: the cells grow so coverage still holds (3x3 cells on 8x8: 9).
        let grid = [ImageGrid(start: 0, rows: 8, cols: 8)]
        let scores = (0..<64).map { _ in rng.nextNormal() }
        checkCoverageAndTopScores(RetentionPolicy.scored.mask(grids: grid, kept: 12, scores: scores), grids: grid,
                                  scores: scores, size: 3, kept: 12)
    }

    func testScoresPoolTheAttentionOfTheGroupsQueries() {
        var rng = SeededRandom(seed: 5)
        let n = 20, d = 16, rows = 3, group = 2
        let keys = (0..<(n * d)).map { _ in rng.nextNormal() }
        // Every query points at token 7's key: it gets most of the attention of every row and head.
        var queries = [Float](repeating: 0, count: group * rows * d)
        for i in 0..<(group * rows) { for e in 0..<d { queries[i * d + e] = 3 * keys[7 * d + e] + 0.1 * rng.nextNormal() } }
        let scores = queries.withUnsafeBufferPointer { q in
            keys.withUnsafeBufferPointer { k in
                RetentionScores.pooled(rows: rows, group: group, query: { i, g in q.baseAddress! + (g * rows + i) * d },
                                       keys: k.baseAddress!, tokens: n, headDim: d)
            }
        }
        XCTAssertEqual(scores.reduce(0, +), Float(rows * group), accuracy: 1e-4, "one probability mass per row and head")
        XCTAssertEqual(scores.indices.max { scores[$0] < scores[$1] }, 7)
    }

    // MARK: The capsule cache on the real decoder

    private let grid = [ImageGrid(start: 0, rows: 8, cols: 8)]
    private let visionPositions: [Int32] = (0..<64).map { Int32(5 + $0) }
    private let prompt: [Int] = (0..<69).map { 200 + ($0 * 37) % 3000 }
    private let question = [11, 22, 33, 44]

    func testScoredLayersKeepWhatTheQuestionAttendsToAndCompressWhenItArrives() throws {
        let model = try RealModel.shared()
        let c = model.config, d = c.headDim, group = c.headCount / c.kvHeadCount
        // Scored layers at 0.6 with float16 keys keep 26 of 64 keys: 16 for coverage, 10 by score.
        let scored = CapsuleLayerSettings(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.6), policy: .scored)
        var layers = Array(repeating: CapsuleLayerSettings(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.6)), count: c.layerCount)
        for l in stride(from: 0, to: c.layerCount, by: 3) { layers[l] = scored }
        let settings = CapsuleSettings(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.6), keys: .nearest, layers: layers)
        let cache = CapsuleCache(config: c, rope: model.rope, settings: settings)
        _ = try model.forward(tokens: prompt, cache: cache)
        try cache.compress(grids: grid, visionPositions: visionPositions)
        let plan = scored.plan(tokens: 64, headDim: d)
        XCTAssertEqual(plan.keptKeys, 26)
        for l in 0..<c.layerCount { XCTAssertEqual(cache.capsule!.layers[l] == nil, layers[l].policy == .scored, "layer \(l)") }
        // The span keys a waiting layer still holds (what it will score).
        var spanKeys: [[Float]] = []
        for l in 0..<c.layerCount {
            spanKeys.append(cache.withLayer(l) { view -> [Float] in
                guard case .float16(let k, _) = view.storage else { return [] }
                return (0..<c.kvHeadCount).flatMap { h in (0..<(64 * d)).map { Float(k[h * view.headStride + 5 * d + $0]) } }
            })
        }
        var queries = [[Float]](repeating: [], count: c.layerCount)
        let logits = try model.forward(embeddings: model.embed(tokens: question), cache: cache) { layer, q, count, _ in
            queries[layer] = Array(UnsafeBufferPointer(start: q, count: count * c.headCount * d))
        }
        XCTAssertTrue(logits.allSatisfy(\.isFinite))
        var distinct = Set<[Int]>()
        for l in stride(from: 0, to: c.layerCount, by: 3) {
            let compressed = try XCTUnwrap(cache.capsule!.layers[l], "layer \(l) compressed by the question")
            for h in 0..<c.kvHeadCount {
                let scores = queries[l].withUnsafeBufferPointer { q in
                    spanKeys[l].withUnsafeBufferPointer { k in
                        RetentionScores.pooled(rows: question.count, group: group,
                                               query: { i, g in q.baseAddress! + i * c.headCount * d + (h * group + g) * d },
                                               keys: k.baseAddress! + h * 64 * d, tokens: 64, headDim: d)
                    }
                }
                let expected = RetentionPolicy.scored.mask(grids: grid, kept: plan.keptKeys, scores: scores)
                XCTAssertEqual(compressed.heads[h].neighbours.retained, expected.indices.filter { expected[$0] }, "layer \(l) head \(h)")
                distinct.insert(compressed.heads[h].neighbours.retained)
            }
        }
        XCTAssertGreaterThan(distinct.count, 1, "retained sets follow each layer's and head's attention")
        // Bytes: what is stored is what the plans count (the scored layers' masks included).
        let planned = (0..<c.layerCount).reduce(0) { $0 + c.kvHeadCount * layers[$1].plan(tokens: 64, headDim: d).bytes }
        XCTAssertEqual(cache.visionBytes, planned)
    }

    func testRatioZeroWithScoredAndPerLayerSettingsReproducesTheFullCache() throws {
        let model = try RealModel.shared()
        let c = model.config
        let full = model.makeCache()
        _ = try model.forward(tokens: prompt, cache: full)
        let expected = try question.map { try model.forward(tokens: [$0], cache: full) }
        let layers = (0..<c.layerCount).map { l in
            CapsuleLayerSettings(budget: CapsuleBudget(ratio: 0, keyRatio: 0), policy: l % 2 == 0 ? .scored : .strided,
                                 reconstructor: l % 3 == 0 ? .nearest : .linear)
        }
        let cache = CapsuleCache(config: c, rope: model.rope,
                                 settings: CapsuleSettings(budget: CapsuleBudget(ratio: 0, keyRatio: 0), keys: .nearest, layers: layers))
        _ = try model.forward(tokens: prompt, cache: cache)
        try cache.compress(grids: grid, visionPositions: visionPositions)
        let got = try question.map { try model.forward(tokens: [$0], cache: cache) }
        XCTAssertTrue(cache.capsule!.layers.allSatisfy { $0 != nil })
        for (a, b) in zip(expected, got) {
            // Every key and the raw float16 values are kept; what differs is the order of float sums in the fused path.
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 3e-3, "r = 0 keeps every key and the raw float16 values")
        }
    }
}
