import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCapsule

final class CapsuleAblationTests: XCTestCase {
    func testVariantsRankAsTheMethodPredictsOnSmoothKeys() throws {
        let layout = CacheLayout(layers: 2, kvHeads: 1, queryHeads: 3, headDim: 8)
        let rope = RotaryEmbedding(headDim: 8, base: 100_000)
        let dir = try syntheticCacheDirectory("ablate", samples: 10, layout: layout, rope: rope)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try CacheStore(directory: dir)
        let budget = CapsuleBudget(ratio: 0.6, keyRatio: 0.5)
        let (linear, _) = try CapsuleFit(budget: budget).run(store: store, ropeBase: rope.base, progress: false)
        let ablation = CapsuleAblation(settings: CapsuleSettings(budget: budget, keys: .linear(linear)), ropeBase: rope.base, samples: 5)
        let held = try ablation.heldOut(store)
        XCTAssertEqual(held.map(\.id), ["s0", "s5"], "every 5th sample, as training holds them out")
        let rows = Dictionary(uniqueKeysWithValues: try ablation.variants(on: held, layout: layout).map { ($0.name, $0) })
        let linearPCA = try XCTUnwrap(rows["keys linear + values PCA"]), nearest = try XCTUnwrap(rows["keys nearest copy + values PCA"])
        let keysOnly = try XCTUnwrap(rows["keys linear, values exact (isolates keys)"])
        let valuesOnly = try XCTUnwrap(rows["keys exact, values PCA (isolates values)"])
        // The keys vary linearly over the grid: the fitted map beats copying the nearest neighbour.
        XCTAssertLessThan(keysOnly.attentionKL!, nearest.attentionKL!)
        XCTAssertLessThanOrEqual(linearPCA.outputError, nearest.outputError + 1e-9)
        XCTAssertEqual(valuesOnly.attentionKL!, 0, accuracy: 1e-9, "exact keys: the attention weights are the full cache's")
        XCTAssertEqual(linearPCA.bytesPerSpan, budget.plan(tokens: 64, headDim: 8).bytes)
        XCTAssertNil(rows["tokens evicted at the same bytes (no reconstruction)"]?.attentionKL)
        XCTAssertLessThanOrEqual(rows["tokens evicted at the same bytes (no reconstruction)"]!.bytesPerSpan!,
                                 Int(Double(budget.plan(tokens: 64, headDim: 8).fullBytes) * 0.4))
        XCTAssertEqual(linearPCA.perLayerOutputError.count, 2)
        // The split sweep refits per key ratio and reports the plan it measured.
        let sweep = try ablation.splitSweep(store: store, held: held, keyRatios: [0.4, 0.6], log: { _ in })
        XCTAssertEqual(sweep.map(\.keptKeys), [38, 26])
        // Head dim 8 makes one value rank 7% of the span, so only "never over budget" holds at this size.
        for p in sweep { XCTAssertGreaterThanOrEqual(p.measuredRatio, 0.6 - 1e-9) }
    }
}
