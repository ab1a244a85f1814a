import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCapsule

/// The capsule cache on the real SmolLM2 decoder, with an 8x8 block of a text prompt standing in for image tokens
/// (the cache only sees positions and vectors, so the plumbing is the same as for real image tokens).
final class CapsuleCacheTests: XCTestCase {
    private func realModel() throws -> LlamaModel {
        do { return try RealModel.shared() } catch {
            XCTFail("\(error)")
            throw error
        }
    }

    private let grid = [ImageGrid(start: 0, rows: 8, cols: 8)]
    private let visionStart = 5
    private var prompt: [Int] { (0..<80).map { 200 + ($0 * 37) % 3000 } }
    private var visionPositions: [Int32] { (0..<64).map { Int32(visionStart + $0) } }

    /// Logits of three decode steps after the prompt, with the given cache (compressed after prefill if a capsule).
    /// With `smoothImage`, the 64 "vision" positions get embeddings that vary smoothly over the grid, as image tokens do.
    private func decode(_ model: LlamaModel, cache: KVCache, smoothImage: Bool = false) throws -> [[Float]] {
        if smoothImage {
            let a = try model.embed(tokens: [1000]), b = try model.embed(tokens: [2000]), c = try model.embed(tokens: [3000])
            var image: [Float] = []
            for r in 0..<8 {
                for col in 0..<8 {
                    let u = Float(r) / 7, v = Float(col) / 7
                    image += (0..<a.count).map { (1 - u) * a[$0] + u * (1 - v) * b[$0] + u * v * c[$0] }
                }
            }
            let p = prompt
            _ = try model.forward([.tokens(Array(p[0..<visionStart])), .embeddings(image, count: 64),
                                   .tokens(Array(p[(visionStart + 64)...]))], cache: cache)
        } else {
            _ = try model.forward(tokens: prompt, cache: cache)
        }
        if let capsule = cache as? CapsuleCache { try capsule.compress(grids: grid, visionPositions: visionPositions) }
        return try [11, 22, 33].map { try model.forward(tokens: [$0], cache: cache) }
    }

    func testGridsByPromptPositionAreRebasedAndBadGridsRefused() throws {
        let model = try realModel()
        let settings = CapsuleSettings(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.5), keys: .nearest)
        let cache = CapsuleCache(config: model.config, rope: model.rope, settings: settings)
        _ = try model.forward(tokens: prompt, cache: cache)
        // Span-indexed grids must start at 0: a prompt position is refused with the reason, not a crash.
        XCTAssertThrowsError(try cache.compress(grids: [ImageGrid(start: visionStart, rows: 8, cols: 8)],
                                                visionPositions: visionPositions)) {
            XCTAssertTrue("\($0)".contains("does not continue the vision span"), "\($0)")
        }
        try cache.compress(imageGridsAtPositions: [ImageGrid(start: visionStart, rows: 8, cols: 8)])
        XCTAssertEqual(cache.visionBytesFull, 64 * 30 * 3 * 64 * 2 * 2)
    }

    func testRatioZeroReproducesTheFullCache() throws {
        let model = try realModel()
        let full = try decode(model, cache: model.makeCache())
        let settings = CapsuleSettings(budget: CapsuleBudget(ratio: 0, keyRatio: 0), keys: .nearest)
        let cache = CapsuleCache(config: model.config, rope: model.rope, settings: settings)
        let capsule = try decode(model, cache: cache)
        for (a, b) in zip(full, capsule) {
            let worst = zip(a, b).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-3, "r = 0 keeps every key and the raw float16 values")
        }
        XCTAssertEqual(cache.visionBytes, cache.visionBytesFull)
        XCTAssertEqual(cache.length, 83)
    }

    func testCompressedBytesMatchTheNominalRatio() throws {
        let model = try realModel()
        for (ratio, keyRatio, dtype) in [(0.6, 0.5, StoragePrecision.float16), (0.8, 0.75, .float16), (0.4, 0.25, .float16),
                                         (0.6, 0.48, .int8), (0.8, 0.7, .int8)] {
            let budget = CapsuleBudget(ratio: ratio, keyRatio: keyRatio, keyPrecision: dtype, valuePrecision: dtype)
            let cache = CapsuleCache(config: model.config, rope: model.rope, settings: CapsuleSettings(budget: budget, keys: .nearest))
            let logits = try decode(model, cache: cache)
            XCTAssertTrue(logits.allSatisfy { $0.allSatisfy(\.isFinite) })
            XCTAssertEqual(cache.visionBytes, 30 * 3 * budget.plan(tokens: 64, headDim: 64).bytes, "what is stored is what the plan counts")
            let measured = 1 - Double(cache.visionBytes) / Double(cache.visionBytesFull)
            XCTAssertEqual(measured, ratio, accuracy: 0.02, "r=\(ratio): measured \(measured)")
            XCTAssertEqual(cache.visionBytesFull, 64 * 30 * 3 * 64 * 2 * 2)
            XCTAssertEqual(cache.textBytes, (83 - 64) * 30 * 3 * 64 * 2 * 2, "text positions stay exact float16")
        }
    }

    /// On a smooth image-like span, rebuilt keys beat eviction: the capsule's logits stay closer to the full cache's
    /// than those of dropping the same tokens.
    func testReconstructionIsCloserToTheFullCacheThanEviction() throws {
        let model = try realModel()
        let full = try decode(model, cache: model.makeCache(), smoothImage: true)
        func distance(_ keys: KeyReconstruction) throws -> Float {
            let cache = CapsuleCache(config: model.config, rope: model.rope,
                                     settings: CapsuleSettings(budget: CapsuleBudget(ratio: 0.25, keyRatio: 0.5), keys: keys))
            let out = try decode(model, cache: cache, smoothImage: true)
            var total: Float = 0
            for (a, b) in zip(full, out) { for (x, y) in zip(a, b) { total += (x - y) * (x - y) } }
            return total
        }
        XCTAssertLessThan(try distance(.nearest), try distance(.evict))
    }
}
