import XCTest
import KVCCore
@testable import KVCBackbone

/// Several sequences decoded together give what each gives alone, on the real model.
final class BatchedDecoderTests: XCTestCase {
    /// Three prompts of different lengths (so the rows sit at different positions), one of them in a float32 cache;
    /// greedy steps of the batch against each sequence decoded on its own, five sequences (a full tile of four and one
    /// more) to cover partial tiles.
    func testBatchedDecodeEqualsSingleStream() throws {
        let model = try SharedModel.get()
        let prompts = [[1, 504, 3458, 314, 260], [1, 9690, 30, 2713, 2838, 288, 253, 1834, 30], [1, 2683], [1, 30, 2838],
                       [1, 253, 1834, 504]]
        let precisions: [PlainKVCache.Precision] = [.float16, .float32, .float16, .float16, .float32]
        let steps = 4
        // Single stream: greedy tokens and their logits.
        var expected: [[[Float]]] = []
        var tokens: [[Int]] = []
        for (prompt, precision) in zip(prompts, precisions) {
            let cache = model.makeCache(precision: precision)
            var logits = try model.forward(tokens: prompt, cache: cache)
            var seqLogits: [[Float]] = [], seqTokens: [Int] = []
            for _ in 0..<steps {
                let next = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
                seqTokens.append(next)
                logits = try model.forward(tokens: [next], cache: cache)
                seqLogits.append(logits)
            }
            expected.append(seqLogits)
            tokens.append(seqTokens)
        }
        // Batch: the same prompts prefilled alone, then the same tokens fed together.
        let caches = try zip(prompts, precisions).map { prompt, precision -> PlainKVCache in
            let cache = model.makeCache(precision: precision)
            _ = try model.forward(tokens: prompt, cache: cache)
            return cache
        }
        let vocab = model.config.vocabularySize
        for step in 0..<steps {
            let logits = try model.decodeStep(tokens: tokens.map { $0[step] }, caches: caches)
            XCTAssertEqual(logits.count, prompts.count * vocab)
            for s in 0..<prompts.count {
                let batched = Array(logits[(s * vocab)..<((s + 1) * vocab)]), single = expected[s][step]
                // The batch's block kernels sum in the single-stream order: the logits are the same numbers.
                XCTAssertEqual(batched, single, "sequence \(s), step \(step): max |Δlogit| "
                               + "\(zip(batched, single).map { abs($0 - $1) }.max()!)")
            }
        }
        for (cache, prompt) in zip(caches, prompts) { XCTAssertEqual(cache.length, prompt.count + steps) }
    }

    func testBatchRefusesASharedCacheAndMismatchedCounts() throws {
        let model = try SharedModel.get()
        let cache = model.makeCache()
        _ = try model.forward(tokens: [1, 2683], cache: cache)
        assertKVCError(try model.decodeStep(tokens: [10, 11], caches: [cache, cache]), contains: ["same cache"])
        assertKVCError(try model.decodeStep(tokens: [10], caches: [cache, model.makeCache()]), contains: ["1 tokens for 2 caches"])
        XCTAssertEqual(cache.length, 2, "a refused batch leaves the caches untouched")
    }
}
