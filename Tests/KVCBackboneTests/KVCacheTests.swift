import XCTest
import KVCCore
@testable import KVCBackbone

/// A test cache that holds the last `window` positions only, handing attention explicit positions: the shape of the
/// eviction baselines (the decoder must attend to what the cache returns, at the positions it reports).
private final class SlidingWindowCache: KVCache {
    let inner: PlainKVCache
    let window: Int
    private var keys: [[Float]], values: [[Float]], positions: [[Int32]]
    private var seen: [Int]
    var layerCount: Int { inner.layerCount }
    var kvHeadCount: Int { inner.kvHeadCount }
    var headDim: Int { inner.headDim }

    init(like cache: PlainKVCache, window: Int) {
        inner = cache
        self.window = window
        keys = Array(repeating: [], count: cache.layerCount)
        values = keys
        positions = Array(repeating: [], count: cache.layerCount)
        seen = Array(repeating: 0, count: cache.layerCount)
    }

    var length: Int { seen[layerCount - 1] }
    var residentBytes: Int { keys.reduce(0) { $0 + $1.count * 8 } }

    func append(layer: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, count: Int) {
        let d = headDim, h = kvHeadCount
        let held = positions[layer].count
        // Rebuild head-major storage with the new entries, then drop the oldest beyond the window.
        var newKeys = [Float](), newValues = [Float]()
        let total = held + count, keep = min(total, window), drop = total - keep
        for head in 0..<h {
            for j in drop..<total {
                if j < held {
                    newKeys += keys[layer][((head * held) + j) * d ..< ((head * held) + j + 1) * d]
                    newValues += values[layer][((head * held) + j) * d ..< ((head * held) + j + 1) * d]
                } else {
                    let src = (head * count + (j - held)) * d
                    newKeys += UnsafeBufferPointer(start: k + src, count: d)
                    newValues += UnsafeBufferPointer(start: v + src, count: d)
                }
            }
        }
        let allPositions = positions[layer] + (0..<count).map { Int32(seen[layer] + $0) }
        positions[layer] = Array(allPositions[drop...])
        keys[layer] = newKeys
        values[layer] = newValues
        seen[layer] += count
    }

    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        try keys[layer].withUnsafeBufferPointer { k in
            try values[layer].withUnsafeBufferPointer { v in
                try positions[layer].withUnsafeBufferPointer { p in
                    try body(KVLayerView(storage: .float32(keys: k.baseAddress!, values: v.baseAddress!),
                                         count: p.count, headStride: p.count * headDim, positions: p.baseAddress!))
                }
            }
        }
    }

    func trim(to length: Int) { preconditionFailure("not used") }
}

final class KVCacheTests: XCTestCase {
    private let ids = [504, 3575, 282, 4649, 314, 7042, 30, 198, 1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 198]

    private func maxDifference(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
        zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }

    /// Token-by-token decoding through the cache gives the logits of one forward over the whole sequence.
    func testIncrementalDecodingEqualsFullForward() throws {
        let model = try SharedModel.get()
        let vocab = model.config.vocabularySize
        for precision in [PlainKVCache.Precision.float32, .float16] {
            let full = try model.forward(tokens: ids, cache: model.makeCache(precision: precision), logits: .all)
            // Small initial capacity so the cache grows while decoding.
            let cache = model.makeCache(precision: precision, initialCapacity: 2)
            var worst: Float = 0
            for (t, id) in ids.enumerated() {
                let step = try model.forward(tokens: [id], cache: cache)
                let reference = full[(t * vocab)..<((t + 1) * vocab)]
                worst = max(worst, maxDifference(step[...], reference))
                XCTAssertEqual(argmax(step[...]), argmax(reference), "top-1 at position \(t) (\(precision))")
            }
            XCTAssertEqual(cache.length, ids.count)
            // float32 storage: only summation order differs between the batched (gemm) and single-token (block
            // kernel) paths. float16 storage: those tiny differences can flip the rounding of a cached element by one
            // half-precision ulp (2^-11 relative), which then propagates: allow that level, 1e-3 of the logit range.
            let scale = full.reduce(0) { max($0, abs($1)) }
            XCTAssertLessThan(worst, precision == .float32 ? 1e-5 * scale + 1e-4 : 1e-3 * scale, "\(precision)")
            print("incremental vs full forward, \(precision): max |logit difference| \(worst)")
        }
    }

    /// Prefill in uneven chunks (some through gemm attention, some through the decode path) equals one pass.
    func testChunkedPrefillEqualsOnePass() throws {
        let model = try SharedModel.get()
        let full = try model.forward(tokens: ids, cache: model.makeCache(precision: .float32))
        let cache = model.makeCache(precision: .float32, initialCapacity: 3)
        var logits: [Float] = []
        var start = 0
        for size in [7, 2, 1, 6, 4] {
            logits = try model.forward(tokens: Array(ids[start..<(start + size)]), cache: cache)
            start += size
        }
        XCTAssertLessThan(maxDifference(logits[...], full[...]), 1e-3)
    }

    /// trim(to:) forgets positions so a different continuation can be evaluated from a shared prefix.
    func testTrimRestoresPrefix() throws {
        let model = try SharedModel.get()
        let cache = model.makeCache()
        _ = try model.forward(tokens: Array(ids[..<10]), cache: cache)
        let bytes = cache.residentBytes
        let first = try model.forward(tokens: [ids[10]], cache: cache)
        _ = try model.forward(tokens: [5, 6, 7], cache: cache)
        cache.trim(to: 10)
        XCTAssertEqual(cache.length, 10)
        let again = try model.forward(tokens: [ids[10]], cache: cache)
        XCTAssertEqual(first, again)
        XCTAssertEqual(bytes, 30 * 3 * 256 * 64 * 2 * 2, "float16 K and V, 30 layers x 3 heads x capacity 256 x 64")
        XCTAssertEqual(cache.storedBytes, 30 * 3 * 11 * 64 * 2 * 2)
    }

    /// The decoder attends to exactly what the cache returns at the positions it reports.
    func testExplicitPositionsAndEviction() throws {
        let model = try SharedModel.get()
        // A window larger than the sequence keeps everything: same logits as the plain cache, via explicit positions.
        let keepAll = SlidingWindowCache(like: model.makeCache(precision: .float32), window: 1000)
        let plain = try model.forward(tokens: ids, cache: model.makeCache(precision: .float32), logits: .all)
        let windowed = try model.forward(tokens: ids, cache: keepAll, logits: .all)
        XCTAssertLessThan(maxDifference(plain[...], windowed[...]), 1e-4)

        // With a 4-token window the last step sees positions 5...8 only: its logits differ from the full
        // context's, and stay finite.
        let small = SlidingWindowCache(like: model.makeCache(precision: .float32), window: 4)
        for id in ids[..<8] { _ = try model.forward(tokens: [id], cache: small) }
        let evicted = try model.forward(tokens: [ids[8]], cache: small)
        XCTAssertEqual(small.length, 9)
        small.withLayer(0) { XCTAssertEqual($0.count, 4); XCTAssertEqual($0.position(0), 5) }
        let reference = try model.forward(tokens: Array(ids[..<9]), cache: model.makeCache(precision: .float32))
        XCTAssertGreaterThan(maxDifference(evicted[...], reference[...]), 1e-2)
        XCTAssertTrue(evicted.allSatisfy { $0.isFinite })
    }
}
