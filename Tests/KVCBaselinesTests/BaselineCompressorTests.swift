import XCTest
import KVCBackbone
import KVCCore
@testable import KVCBaselines

/// The baselines on synthetic spans: bytes against their budget, what eviction keeps, quantization error.
final class BaselineCompressorTests: XCTestCase {
    private func randomSpan(layer: Int, layerCount: Int = 30, tokens n: Int, kvHeads: Int = 3, headDim d: Int = 64,
                            seed: UInt64 = 1, scores: [[Float]] = []) -> VisionSpan {
        var rng = SeededRandom(seed: seed)
        let keys = (0..<(kvHeads * n * d)).map { _ in rng.nextNormal() * 2 }
        let values = (0..<(kvHeads * n * d)).map { _ in rng.nextNormal() }
        return VisionSpan(layer: layer, layerCount: layerCount, tokens: n, kvHeads: kvHeads, headDim: d, keys: keys,
                          values: values, scores: scores)
    }

    /// Every baseline's encoded bytes over all 30 layers within 2% of its nominal budget, for a 4-image span (256
    /// tokens; with one image the budget's granularity, one token or one PCA rank, is itself 1.5-8%).
    func testMeasuredBytesMatchNominalBudget() throws {
        let n = 256, layers = 30
        var rng = SeededRandom(seed: 3)
        let scores = (0..<layers).map { _ in (0..<n).map { _ in rng.nextUniform() } }
        let base = randomSpan(layer: 0, tokens: n, scores: scores)
        for method in BaselineMethod.allCases {
            for ratio in [0.6, 0.8] {
                let compressor = try method.compressor(ratio: ratio, headDim: 64, seed: 5)
                var bytes = 0
                for l in 0..<layers {
                    let span = VisionSpan(layer: l, layerCount: layers, tokens: n, kvHeads: 3, headDim: 64, keys: base.keys,
                                          values: base.values, scores: scores)
                    let out = try compressor.compress(span)
                    XCTAssertEqual(out.keys.count, 3 * out.kept.count * 64)
                    XCTAssertEqual(out.kept, out.kept.sorted(), "\(method) keeps tokens in order")
                    bytes += out.bytes
                }
                let nominal = (1 - compressor.ratio) * Double(layers * base.fullBytes)
                XCTAssertEqual(Double(bytes) / nominal, 1, accuracy: 0.02, "\(method) r=\(ratio): \(bytes) bytes vs \(nominal)")
            }
        }
        XCTAssertEqual(try BaselineMethod.int8.compressor(ratio: 0.6, headDim: 64).ratio, 1 - 66.0 / 128, accuracy: 1e-9)
        XCTAssertEqual(try BaselineMethod.int4.compressor(ratio: 0.6, headDim: 64).ratio, 1 - 36.0 / 128, accuracy: 1e-9)
    }

    func testScoreBasedEvictionKeepsExactlyTheTopScoredTokens() throws {
        let n = 64
        var rng = SeededRandom(seed: 9)
        let scores = (0..<2).map { _ in (0..<n).map { _ in rng.nextUniform() } }
        let span = randomSpan(layer: 1, layerCount: 2, tokens: n, scores: scores)
        let out = try H2OEviction(ratio: 0.75).compress(span)
        let k = EvictionBudget.keptTokens(tokens: n, ratio: 0.75, kvHeads: 3, headDim: 64, indexBytes: 8)
        XCTAssertEqual(k, 16)
        let expected = (0..<n).sorted { scores[1][$0] > scores[1][$1] }.prefix(k).sorted()
        XCTAssertEqual(out.kept, Array(expected))
        // Kept tokens keep their exact keys and values.
        for (j, i) in out.kept.enumerated() {
            XCTAssertEqual(Array(out.keys[(2 * k + j) * 64..<((2 * k + j + 1) * 64)]),
                           Array(span.keys[(2 * n + i) * 64..<((2 * n + i + 1) * 64)]))
        }
    }

    /// H2O in its cache, end to end: queries that look along one direction, keys with a large component along it for
    /// some image tokens; those are the ones kept. (Token 2, the first image token, is the only thing its own query
    /// sees besides text with no key component, so it receives a third of that row: more than a heavy token seen by
    /// the last row alone would — H2O's known bias towards early tokens, hence no heavy token at 9 here.)
    func testCacheScoresPrefillAttentionAndEvictsTheLeastAttended() throws {
        let config = LlamaConfig(layerCount: 2, hiddenSize: 8, intermediateSize: 8, headCount: 2, kvHeadCount: 1, headDim: 4,
                                 vocabularySize: 10, contextLength: 64, ropeBase: 10_000, rmsNormEpsilon: 1e-5)
        let cache = VisionSpanCache(config: config, compressor: H2OEviction(ratio: 0.5))
        let t = 10, heavy: Set<Int> = [3, 5, 6, 8]
        var rng = SeededRandom(seed: 4)
        var keys = [Float](repeating: 0, count: t * 4), values = keys
        for j in 0..<t {
            for e in 0..<4 { keys[j * 4 + e] = 0.1 * rng.nextNormal(); values[j * 4 + e] = rng.nextNormal() }
            if heavy.contains(j) { keys[j * 4] += 8 }
        }
        let queries = (0..<t).flatMap { _ in [Float](arrayLiteral: 4, 0, 0, 0, 3, 0.5, 0, 0) }
        let observer = try XCTUnwrap(cache.queryObserver)
        for l in 0..<2 {
            queries.withUnsafeBufferPointer { observer(l, $0.baseAddress!, t, 0) }
            cache.append(layer: l, keys: keys, values: values, count: t)
        }
        try cache.compress(visionPositions: (2..<10).map { Int32($0) })
        XCTAssertNil(cache.queryObserver, "nothing to observe once compressed")
        for l in 0..<2 {
            cache.withLayer(l) { view in
                XCTAssertEqual((0..<view.count).map { view.position($0) }, [0, 1, 3, 5, 6, 8])
            }
        }
        XCTAssertEqual(cache.visionBytes, 2 * (4 * 4 * 2 * 2 + 1), "4 tokens x (key + value) float16 + 1 mask byte, per layer")
        XCTAssertEqual(cache.length, t)
        cache.trim(to: t)
        XCTAssertEqual(cache.length, t)
    }

    func testAttentionScoresMatchADirectSoftmax() {
        let t = 7, heads = 2, d = 4
        var rng = SeededRandom(seed: 11)
        let q = (0..<(t * heads * d)).map { _ in rng.nextNormal() }
        let k = (0..<(t * d)).map { _ in rng.nextNormal() }
        let scorer = PrefillAttentionScores(scoring: .accumulated, layerCount: 1, headCount: heads, headDim: d)
        q.withUnsafeBufferPointer { scorer.observe(layer: 0, queries: $0.baseAddress!, count: t, firstPosition: 0) }
        k.withUnsafeBufferPointer { kp in
            k.withUnsafeBufferPointer { vp in
                scorer.score(layer: 0, view: KVLayerView(storage: .float32(keys: kp.baseAddress!, values: vp.baseAddress!),
                                                         count: t, headStride: t * d), kvHeadCount: 1)
            }
        }
        var expected = [Double](repeating: 0, count: t)
        for h in 0..<heads {
            for i in 0..<t {
                let logits = (0...i).map { j in (0..<d).reduce(0.0) { $0 + Double(q[i * heads * d + h * d + $1] * k[j * d + $1]) } / 2 }
                let m = logits.max()!, z = logits.reduce(0.0) { $0 + exp($1 - m) }
                for j in 0...i { expected[j] += exp(logits[j] - m) / z }
            }
        }
        for j in 0..<t { XCTAssertEqual(Double(scorer.scores[0][j]), expected[j], accuracy: 1e-4) }
    }

    func testFastVKeepsItsFirstLayersWholeAndPrunesByTheLastQuery() throws {
        let n = 64
        var rng = SeededRandom(seed: 13)
        let scores = (0..<4).map { _ in (0..<n).map { _ in rng.nextUniform() } }
        let fastv = FastVPruning(ratio: 0.6)
        for l in 0..<4 {
            let span = randomSpan(layer: l, layerCount: 4, tokens: n, scores: scores)
            let out = try fastv.compress(span)
            if l < 2 {
                XCTAssertEqual(out.kept, Array(0..<n))
                XCTAssertEqual(out.keys, span.keys)
                XCTAssertEqual(out.values, span.values)
                XCTAssertEqual(out.bytes, span.fullBytes)
            } else {
                let k = fastv.keptTokens(tokens: n, layerCount: 4, kvHeads: 3, headDim: 64)
                XCTAssertLessThan(k, n)
                XCTAssertEqual(out.kept, EvictionBudget.top(k, of: scores[1]), "ranked by layer 1's last-query attention")
            }
        }
    }

    func testQuantizationRoundTripErrorIsWithinHalfAStep() throws {
        var rng = SeededRandom(seed: 17)
        let rows = 50, d = 64
        var x = (0..<(rows * d)).map { _ in rng.nextNormal() }
        x[5] = 40   // an outlier widens its row's (group's) step only
        for (bits, group) in [(8, 64), (4, 32)] {
            let q = try TokenQuantization(bits: bits, groupSize: group, headDim: d)
            var bytes = 0
            let y = q.roundTrip(x, rows: rows, bytes: &bytes)
            XCTAssertEqual(bytes, rows * (d * bits / 8 + 2 * (d / group)))
            let largest = Float((1 << (bits - 1)) - 1)
            for g in stride(from: 0, to: x.count, by: group) {
                let peak = x[g..<(g + group)].map(abs).max()!
                for i in g..<(g + group) {
                    XCTAssertLessThanOrEqual(abs(x[i] - y[i]), 0.51 * peak / largest + 1e-6, "int\(bits) element \(i)")
                }
            }
        }
    }

    func testStridedAndRandomKeepTheirBudgetReproducibly() throws {
        let span = randomSpan(layer: 0, tokens: 64)
        let strided = try StridedDropping(ratio: 0.75).compress(span)
        XCTAssertEqual(strided.kept, stride(from: 0, to: 64, by: 4).map { $0 })
        let a = try RandomDropping(ratio: 0.75, seed: 1).compress(span), b = try RandomDropping(ratio: 0.75, seed: 1).compress(span)
        let c = try RandomDropping(ratio: 0.75, seed: 2).compress(span)
        XCTAssertEqual(a.kept, b.kept)
        XCTAssertNotEqual(a.kept, c.kept)
        XCTAssertEqual(a.kept.count, 16)
    }
}
