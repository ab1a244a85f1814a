import XCTest
import KVCCore
@testable import KVCBackbone

/// Logits of the real model against independent float references.
final class LlamaReferenceTests: XCTestCase {
    /// Within 1e-3 relative to the logit's magnitude (floored at 1, as logits near zero carry no scale).
    private func assertClose(_ a: Float, _ b: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let tolerance = 1e-3 * max(1, abs(b))
        XCTAssertLessThanOrEqual(abs(Double(a) - b), tolerance, "\(what): got \(a), reference \(b)", file: file, line: line)
    }

    /// scripts/reference/llama_reference.py: numpy float64 over the gguf package's dequantized tensors, in the
    /// Hugging Face RoPE layout. Every position's logits from one batched forward.
    func testLogitsMatchNumpyReference() throws {
        let model = try SharedModel.get()
        let doc = try TestPaths.json("llama_reference.json")
        let cases = try XCTUnwrap(doc["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 3)
        let vocab = model.config.vocabularySize
        var worst: Double = 0
        for c in cases {
            let ids = try XCTUnwrap(c["ids"] as? [Int])
            let logits = try model.forward(tokens: ids, cache: model.makeCache(precision: .float32), logits: .all)
            XCTAssertEqual(logits.count, ids.count * vocab)
            for p in try XCTUnwrap(c["positions"] as? [[String: Any]]) {
                let t = try XCTUnwrap(p["position"] as? Int)
                let row = logits[(t * vocab)..<((t + 1) * vocab)]
                let top = try XCTUnwrap(p["top"] as? [[String: Any]])
                for entry in top {
                    let id = try XCTUnwrap(entry["id"] as? Int), ref = try XCTUnwrap(entry["logit"] as? Double)
                    assertClose(row[row.startIndex + id], ref, "position \(t) token \(id)")
                    worst = max(worst, abs(Double(row[row.startIndex + id]) - ref) / max(1, abs(ref)))
                }
                XCTAssertEqual(argmax(row), top[0]["id"] as? Int, "top-1 at position \(t)")
                for slice in try XCTUnwrap(p["slices"] as? [[String: Any]]) {
                    let start = try XCTUnwrap(slice["start"] as? Int)
                    for (k, ref) in try XCTUnwrap(slice["logits"] as? [Double]).enumerated() {
                        assertClose(row[row.startIndex + start + k], ref, "position \(t) token \(start + k)")
                    }
                }
            }
        }
        print("largest relative logit difference vs numpy float64: \(worst)")
    }

    /// Greedy continuation through the cache (prefill, then one token at a time) equals the reference's, which
    /// re-ran the whole sequence for every token.
    func testGreedyContinuationMatchesReference() throws {
        let model = try SharedModel.get()
        let doc = try TestPaths.json("llama_reference.json")
        for c in try XCTUnwrap(doc["cases"] as? [[String: Any]]) {
            let ids = try XCTUnwrap(c["ids"] as? [Int])
            let expected = try XCTUnwrap(c["greedy_continuation"] as? [Int])
            let cache = model.makeCache()
            var logits = try model.forward(tokens: ids, cache: cache)
            var produced: [Int] = []
            for _ in expected {
                let next = argmax(logits[...])
                produced.append(next)
                logits = try model.forward(tokens: [next], cache: cache)
            }
            XCTAssertEqual(produced, expected, "continuation of \(c["text"] ?? "")")
            XCTAssertEqual(cache.length, ids.count + expected.count)
        }
    }

    /// Decoding with bfloat16 weight products (`WeightProducts.bfloat16`) keeps the reference's greedy continuation,
    /// and its logits stay within a few hundredths of the float32 decoder's, step by step on the same tokens.
    func testBFloat16WeightProductsKeepTheGreedyContinuation() throws {
        try XCTSkipUnless(BFloat16Tile.supported, "this CPU has no AVX-512 BF16")
        let model = try SharedModel.get()
        defer { model.weightProducts = .float32 }
        let doc = try TestPaths.json("llama_reference.json")
        var worst: Float = 0
        for c in try XCTUnwrap(doc["cases"] as? [[String: Any]]) {
            let ids = try XCTUnwrap(c["ids"] as? [Int])
            let expected = try XCTUnwrap(c["greedy_continuation"] as? [Int])
            let exactCache = model.makeCache(), roundedCache = model.makeCache()
            var exact = try model.forward(tokens: ids, cache: exactCache)
            var rounded = try model.forward(tokens: ids, cache: roundedCache)
            var produced: [Int] = []
            for want in expected {
                produced.append(argmax(rounded[...]))
                let scale = max(1, exact.map(abs).max()!)
                let gap = zip(exact, rounded).map { abs($0 - $1) }.max()!
                worst = max(worst, gap / scale)
                XCTAssertLessThan(gap, 0.03 * scale, "logits after \(produced.count - 1) decoded tokens")
                model.weightProducts = .float32
                exact = try model.forward(tokens: [want], cache: exactCache)
                model.weightProducts = .bfloat16
                rounded = try model.forward(tokens: [want], cache: roundedCache)
            }
            model.weightProducts = .float32
            XCTAssertEqual(produced, expected, "bfloat16 continuation of \(c["text"] ?? "")")
        }
        print("largest logit difference, bfloat16 vs float32 weight products, relative to the largest logit: \(worst)")
    }

    /// Hugging Face transformers float32 on the same file (fixture copied from the project's shared reference data).
    func testTopTenMatchesHuggingFaceFloat32() throws {
        let model = try SharedModel.get()
        let doc = try TestPaths.json("smollm2-reference.json")
        let ids = try XCTUnwrap(doc["prompt_ids"] as? [Int])
        let logits = try model.forward(tokens: ids, cache: model.makeCache())
        let top = try XCTUnwrap(doc["last_position_top10"] as? [[String: Any]])
        let ours = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(top.count)
        XCTAssertEqual(Array(ours), top.compactMap { $0["id"] as? Int })
        for entry in top {
            let id = try XCTUnwrap(entry["id"] as? Int), ref = try XCTUnwrap(entry["logit"] as? Double)
            assertClose(logits[id], ref, "token \(id)")
        }
    }
}
