import CDecodeKernels
import Dispatch
import KVCCore

/// Scaled dot-product attention of new queries over what a `KVLayerView` holds, with grouped-query heads.
///
/// Queries are row-major `[T][headCount * headDim]` (already rotated) at positions `firstPosition ..< firstPosition + T`;
/// a query at position p sees the cache entries whose position is <= p (entries are in ascending position order,
/// so that is a prefix of the view). The output has the queries' layout.
///
/// Two paths with the same result up to rounding: a few queries (decoding) read the cache in place, float16 or
/// float32, head by head; many queries (prefill) go through BLAS gemm per head on float32 copies of K/V.
enum AttentionKernel {
    static let gemmThreshold = 4

    static func run(queries: UnsafePointer<Float>, count t: Int, firstPosition: Int, view: KVLayerView,
                    headCount: Int, kvHeadCount: Int, headDim: Int, output: UnsafeMutablePointer<Float>, threads: Int) {
        let group = headCount / kvHeadCount
        let scale = 1 / Float(headDim).squareRoot()
        let rowStride = headCount * headDim
        // Visible entries for each query: the prefix of entries at positions <= the query's position.
        var visible = [Int](repeating: 0, count: t)
        var j = 0
        for i in 0..<t {
            let p = firstPosition + i
            while j < view.count && view.position(j) <= p { j += 1 }
            visible[i] = j
        }
        if t < gemmThreshold {
            let work = t * view.count * headCount * headDim
            let workers = work > 200_000 ? min(threads, kvHeadCount) : 1
            visible.withUnsafeBufferPointer { vis in
                let visible = vis.baseAddress!
                let perform: (Int) -> Void = { h in
                    for i in 0..<t {
                        decodeHead(kvHead: h, group: group, query: queries + i * rowStride, visible: visible[i], view: view,
                                   headDim: headDim, scale: scale, output: output + i * rowStride)
                    }
                }
                if workers > 1 {
                    let perWorker = (kvHeadCount + workers - 1) / workers
                    DecodeThreadPool.shared(threads: threads).run(chunks: workers) { w in
                        for h in (w * perWorker)..<min(kvHeadCount, (w + 1) * perWorker) { perform(h) }
                    }
                } else {
                    for h in 0..<kvHeadCount { perform(h) }
                }
            }
        } else {
            prefill(queries: queries, count: t, visible: visible, view: view, headCount: headCount,
                    kvHeadCount: kvHeadCount, headDim: headDim, scale: scale, output: output)
        }
    }

    // MARK: Few queries: read the cache in place

    private static func decodeHead(kvHead h: Int, group: Int, query: UnsafePointer<Float>, visible n: Int,
                                   view: KVLayerView, headDim: Int, scale: Float, output: UnsafeMutablePointer<Float>) {
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1) * group)
        defer { scores.deallocate() }
        let base = h * view.headStride
        switch view.storage {
        case .float32(let keys, let values):
            decodeHead(F32Rows(base: keys + base), F32Rows(base: values + base), h: h, group: group, query: query,
                       n: n, headDim: headDim, scale: scale, scores: scores, output: output)
        case .float16(let keys, let values) where group == 3 && headDim % 16 == 0:
            halfGroupOfThree(keys: keys + base, values: values + base, h: h, query: query, n: n, headDim: headDim,
                             scale: scale, scores: scores, output: output)
        case .float16(let keys, let values):
            decodeHead(F16Rows(base: keys + base), F16Rows(base: values + base), h: h, group: group, query: query,
                       n: n, headDim: headDim, scale: scale, scores: scores, output: output)
        }
    }

    /// Float16 rows and SmolLM2's three query heads per KV head: the C kernels the capsule's fused path uses for its
    /// float16 text entries, so the full cache and the capsule read float16 the same way (and the full cache gets the
    /// C kernels' vectorized row reductions: 1.44 -> 1.33 ms of attention per step at 587 positions, one thread).
    private static func halfGroupOfThree(keys: UnsafePointer<Float16>, values: UnsafePointer<Float16>, h: Int,
                                         query: UnsafePointer<Float>, n: Int, headDim: Int, scale: Float,
                                         scores: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>) {
        let out = output + h * 3 * headDim
        out.update(repeating: 0, count: 3 * headDim)
        guard n > 0 else { return }
        let keyBits = UnsafeRawPointer(keys).assumingMemoryBound(to: UInt16.self)
        let valueBits = UnsafeRawPointer(values).assumingMemoryBound(to: UInt16.self)
        kvc_half_scores_group3(keyBits, n, headDim, query + h * 3 * headDim, scale, scores, n)
        for g in 0..<3 { softmax(scores + g * n, count: n) }
        kvc_half_accumulate(valueBits, headDim, n, scores, n, 3, out)
    }

    /// Three query heads per key/value head (SmolLM2's grouping), head dim a multiple of 16: each key row is
    /// converted once for the three queries, and the value pass keeps its accumulators in registers, two 8-wide
    /// column chunks at a time over all rows.
    @inline(__always)
    private static func decodeGroupOfThree<Rows: KVRows>(_ keys: Rows, _ values: Rows, h: Int, query: UnsafePointer<Float>,
                                                         n: Int, headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                                                         output: UnsafeMutablePointer<Float>) {
        let chunks = headDim / 8
        let q = query + h * 3 * headDim
        @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
            UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
        }
        for j in 0..<n {
            let row = j * headDim
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
            for c in 0..<chunks {
                let k = keys.load8(row + 8 * c)
                a0.addProduct(k, load(q + 8 * c))
                a1.addProduct(k, load(q + headDim + 8 * c))
                a2.addProduct(k, load(q + 2 * headDim + 8 * c))
            }
            scores[j] = a0.sum() * scale
            scores[n + j] = a1.sum() * scale
            scores[2 * n + j] = a2.sum() * scale
        }
        for g in 0..<3 { softmax(scores + g * n, count: n) }
        let out = output + h * 3 * headDim
        var c = 0
        while c < chunks {
            var o00 = SIMD8<Float>(), o01 = SIMD8<Float>(), o10 = SIMD8<Float>()
            var o11 = SIMD8<Float>(), o20 = SIMD8<Float>(), o21 = SIMD8<Float>()
            for j in 0..<n {
                let v0 = values.load8(j * headDim + 8 * c), v1 = values.load8(j * headDim + 8 * c + 8)
                let p0 = scores[j], p1 = scores[n + j], p2 = scores[2 * n + j]
                o00.addProduct(p0, v0); o01.addProduct(p0, v1)
                o10.addProduct(p1, v0); o11.addProduct(p1, v1)
                o20.addProduct(p2, v0); o21.addProduct(p2, v1)
            }
            for (g, pair) in [(o00, o01), (o10, o11), (o20, o21)].enumerated() {
                let o = UnsafeMutableRawPointer(out + g * headDim + 8 * c)
                o.storeBytes(of: pair.0, as: SIMD8<Float>.self)
                (o + 32).storeBytes(of: pair.1, as: SIMD8<Float>.self)
            }
            c += 2
        }
    }

    @inline(__always)
    private static func decodeHead<Rows: KVRows>(_ keys: Rows, _ values: Rows, h: Int, group: Int, query: UnsafePointer<Float>,
                                                 n: Int, headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                                                 output: UnsafeMutablePointer<Float>) {
        let chunks = headDim / 8
        for g in 0..<group {
            let hq = h * group + g
            for d in 0..<headDim { output[hq * headDim + d] = 0 }
        }
        guard n > 0 else { return }
        if group == 3 && headDim % 16 == 0 {
            decodeGroupOfThree(keys, values, h: h, query: query, n: n, headDim: headDim, scale: scale, scores: scores,
                               output: output)
            return
        }
        // Scores of the group's queries against each key (each key row is read once for all of them).
        for j in 0..<n {
            let row = j * headDim
            for g in 0..<group {
                let q = query + (h * group + g) * headDim
                var acc = SIMD8<Float>()
                for c in 0..<chunks {
                    acc.addProduct(keys.load8(row + 8 * c), UnsafeRawPointer(q + 8 * c).loadUnaligned(as: SIMD8<Float>.self))
                }
                var s = acc.sum()
                for d in (chunks * 8)..<headDim { s += keys.scalar(row + d) * q[d] }
                scores[g * n + j] = s * scale
            }
        }
        for g in 0..<group { softmax(scores + g * n, count: n) }
        // Weighted sum of the values, again one pass over the rows for the whole group.
        for j in 0..<n {
            let row = j * headDim
            for c in 0..<chunks {
                let v = values.load8(row + 8 * c)
                for g in 0..<group {
                    let o = UnsafeMutableRawPointer(output + (h * group + g) * headDim + 8 * c)
                    o.storeBytes(of: o.loadUnaligned(as: SIMD8<Float>.self) + scores[g * n + j] * v, as: SIMD8<Float>.self)
                }
            }
            for d in (chunks * 8)..<headDim {
                for g in 0..<group { output[(h * group + g) * headDim + d] += scores[g * n + j] * values.scalar(row + d) }
            }
        }
    }

    // MARK: Many queries: gemm per head

    private static func prefill(queries: UnsafePointer<Float>, count t: Int, visible: [Int], view: KVLayerView,
                                headCount: Int, kvHeadCount: Int, headDim: Int, scale: Float,
                                output: UnsafeMutablePointer<Float>) {
        let n = visible.last ?? 0
        let rowStride = headCount * headDim
        let group = headCount / kvHeadCount
        let keys = UnsafeMutablePointer<Float>.allocate(capacity: max(n * headDim, 1))
        let values = UnsafeMutablePointer<Float>.allocate(capacity: max(n * headDim, 1))
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: max(t * n, 1))
        defer { keys.deallocate(); values.deallocate(); scores.deallocate() }
        for h in 0..<kvHeadCount {
            let base = h * view.headStride
            switch view.storage {
            case .float32(let k, let v):
                keys.update(from: k + base, count: n * headDim)
                values.update(from: v + base, count: n * headDim)
            case .float16(let k, let v):
                k.withMemoryRebound(to: UInt16.self, capacity: base + n * headDim) {
                    HalfConversion.halfToFloat($0 + base, keys, count: n * headDim)
                }
                v.withMemoryRebound(to: UInt16.self, capacity: base + n * headDim) {
                    HalfConversion.halfToFloat($0 + base, values, count: n * headDim)
                }
            }
            for g in 0..<group {
                let hq = h * group + g
                // scores[t][n] = scale * Q_hq[t][d] · K[n][d]ᵀ
                BLAS.gemm(transB: true, m: t, n: n, k: headDim, alpha: scale, a: queries + hq * headDim, lda: rowStride,
                          b: keys, ldb: headDim, c: scores, ldc: n)
                for i in 0..<t {
                    let row = scores + i * n
                    let seen = visible[i]
                    softmax(row, count: seen)
                    for j in seen..<n { row[j] = 0 }
                }
                // out[t][d] = P[t][n] · V[n][d]
                BLAS.gemm(m: t, n: headDim, k: n, a: scores, lda: n, b: values, ldb: headDim,
                          c: output + hq * headDim, ldc: rowStride)
            }
        }
    }

    /// In-place softmax (max-subtracted, float32).
    @inline(__always)
    static func softmax(_ x: UnsafeMutablePointer<Float>, count n: Int) { kvc_softmax(x, n) }
}

/// Row reads from a cache view, specialised per element type.
private protocol KVRows {
    func load8(_ offset: Int) -> SIMD8<Float>
    func scalar(_ offset: Int) -> Float
}

private struct F32Rows: KVRows {
    let base: UnsafePointer<Float>
    @inline(__always) func load8(_ offset: Int) -> SIMD8<Float> {
        UnsafeRawPointer(base + offset).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) func scalar(_ offset: Int) -> Float { base[offset] }
}

private struct F16Rows: KVRows {
    let base: UnsafePointer<Float16>
    @inline(__always) func load8(_ offset: Int) -> SIMD8<Float> {
        SIMD8<Float>(UnsafeRawPointer(base + offset).loadUnaligned(as: SIMD8<Float16>.self))
    }
    @inline(__always) func scalar(_ offset: Int) -> Float { Float(base[offset]) }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
