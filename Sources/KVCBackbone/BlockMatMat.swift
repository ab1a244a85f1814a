import KVCCore
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// The weight products of a batched decode step: one stored matrix times a few vectors (one per sequence), reading
/// each ggml block once for up to `tile` vectors instead of once per vector.
///
/// Every output is summed in exactly `BlockMatVec`'s order (same block sums, same multiply-adds per block, same final
/// reduction), so each row of the batch equals the single-vector product bit for bit: a sequence decodes the same
/// tokens in a batch as alone. Rows are split into chunks small enough to stay in cache while every tile of vectors
/// passes over them.
enum BlockMatMat {
    /// Vectors sharing one pass over the weights (four accumulators plus the dequantized block fit the 16 AVX registers).
    static let tile = 4

    /// `y[i][r] = W[r] · x[i]` for `count` vectors `x` `[count][cols]`; `y` is `[count][rows]`.
    static func run(_ w: WeightMatrix, x: UnsafePointer<Float>, count: Int, y: UnsafeMutablePointer<Float>, threads: Int) {
        let cols = w.cols, blocks = cols / 32
        let blockSums = UnsafeMutablePointer<Float>.allocate(capacity: max(count * blocks, 1))
        defer { blockSums.deallocate() }
        for i in 0..<count {
            let xi = x + i * cols
            for b in 0..<blocks {
                var s: Float = 0
                for j in 0..<32 { s += xi[b * 32 + j] }
                blockSums[i * blocks + b] = s
            }
        }
        let sums = UnsafePointer(blockSums)
        // Chunks of about 64 KB of weights, at least a few per thread.
        let chunks = max(1, min(w.rows / 16, max(threads * BlockMatVec.chunksPerThread, w.blockBytes / 65_536)))
        let chunk = (w.rows + chunks - 1) / chunks
        let perform: (Int) -> Void = { c in
            let lo = c * chunk, hi = min(w.rows, lo + chunk)
            guard lo < hi else { return }
            // Full tiles, and a last tile of three; one or two leftover vectors take the single-vector kernel (a
            // tile kernel computes four products whatever it stores).
            var first = 0
            while first < count {
                let n = min(tile, count - first)
                if n >= 3 {
                    rows(w, lo..<hi, x: x, blockSums: sums, vectors: first..<(first + n), y: y)
                } else {
                    for i in first..<(first + n) {
                        BlockMatVec.rows(w, lo..<hi, x: x + i * w.cols, blockSums: sums + i * (w.cols / 32), y: y + i * w.rows)
                    }
                }
                first += n
            }
        }
        if threads > 1 && chunks > 1 {
            DecodeThreadPool.shared(threads: threads).run(chunks: chunks, perform)
        } else {
            for c in 0..<chunks { perform(c) }
        }
    }

    /// Rows `range` of the products with the vectors `vectors` (at most `tile`).
    private static func rows(_ w: WeightMatrix, _ range: Range<Int>, x: UnsafePointer<Float>, blockSums: UnsafePointer<Float>,
                             vectors: Range<Int>, y: UnsafeMutablePointer<Float>) {
        let cols = w.cols, blocks = cols / 32
        for segment in w.segments {
            let lo = max(range.lowerBound, segment.rows.lowerBound), hi = min(range.upperBound, segment.rows.upperBound)
            guard lo < hi else { continue }
            let first = UnsafeRawPointer(segment.data) + (lo - segment.rows.lowerBound) * segment.rowBytes
#if arch(x86_64)
            // Unused slots of a partial tile repeat its first vector; their results are not stored.
            let v = (0..<tile).map { vectors.lowerBound + min($0, vectors.count - 1) }
            let tileVectors = TileVectors(x: v.map { x + $0 * cols }, sums: v.map { blockSums + $0 * blocks },
                                          y: v.map { y + $0 * w.rows + lo }, active: vectors.count)
            switch segment.format {
            case .q4_1: q4(first, rows: hi - lo, rowBytes: segment.rowBytes, cols: cols, tile: tileVectors, hasMin: true); continue
            case .q4_0: q4(first, rows: hi - lo, rowBytes: segment.rowBytes, cols: cols, tile: tileVectors, hasMin: false); continue
            case .q8_0: q8_0(first, rows: hi - lo, rowBytes: segment.rowBytes, cols: cols, tile: tileVectors); continue
            case .f16, .f32: break
            }
#endif
            // Other formats: the single-vector kernel per vector (the same code, so the same sums).
            for i in vectors {
                BlockMatVec.rows(w, lo..<hi, x: x + i * cols, blockSums: blockSums + i * blocks, y: y + i * w.rows)
            }
        }
    }

#if arch(x86_64)
    private struct TileVectors {
        let x: [UnsafePointer<Float>]
        let sums: [UnsafePointer<Float>]
        let y: [UnsafeMutablePointer<Float>]
        let active: Int
    }

    @inline(__always)
    private static func half(_ p: UnsafeRawPointer, _ offset: Int = 0) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
    }

    /// One widened 32-weight block times 32 elements of x, in `BlockMatVec`'s order (multiply, then three multiply-adds).
    @inline(__always)
    private static func dot(_ q0: __m256, _ q1: __m256, _ q2: __m256, _ q3: __m256, _ xb: UnsafePointer<Float>) -> __m256 {
        var s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb))
        s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s)
        s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s)
        return _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s)
    }

    /// `BlockMatVec.q4` for four vectors: the block is widened once, then each vector takes its four multiply-adds.
    private static func q4(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int, tile: TileVectors, hasMin: Bool) {
        let blocks = cols / 32
        let blockBytes = hasMin ? 20 : 18
        let nibble = _mm_set1_epi8(0x0F)
        let x0 = tile.x[0], x1 = tile.x[1], x2 = tile.x[2], x3 = tile.x[3]
        let s0 = tile.sums[0], s1 = tile.sums[1], s2 = tile.sums[2], s3 = tile.sums[3]
        for r in 0..<rows {
            var p = w + r * rowBytes
            var a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
            var o0: Float = 0, o1: Float = 0, o2: Float = 0, o3: Float = 0
            for b in 0..<blocks {
                let d = half(p)
                let m = hasMin ? half(p, 2) : -8 * d
                let packed = (p + (hasMin ? 4 : 2)).loadUnaligned(as: __m128i.self)
                let low = _mm_and_si128(packed, nibble)
                let high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble)
                let q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low))
                let q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(low, low)))
                let q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high))
                let q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(high, high)))
                let dv = _mm256_set1_ps(d)
                a0 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x0 + b * 32), a0)
                a1 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x1 + b * 32), a1)
                a2 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x2 + b * 32), a2)
                a3 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x3 + b * 32), a3)
                o0 += m * s0[b]; o1 += m * s1[b]; o2 += m * s2[b]; o3 += m * s3[b]
                p += blockBytes
            }
            store(r, tile, a0.sum() + o0, a1.sum() + o1, a2.sum() + o2, a3.sum() + o3)
        }
    }

    /// `BlockMatVec.q8_0` for four vectors.
    private static func q8_0(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int, tile: TileVectors) {
        let blocks = cols / 32
        let x0 = tile.x[0], x1 = tile.x[1], x2 = tile.x[2], x3 = tile.x[3]
        for r in 0..<rows {
            var p = w + r * rowBytes
            var a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
            for b in 0..<blocks {
                let d = half(p)
                let lo = (p + 2).loadUnaligned(as: __m128i.self)
                let hi = (p + 18).loadUnaligned(as: __m128i.self)
                let q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))
                let q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)))
                let q2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))
                let q3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)))
                let dv = _mm256_set1_ps(d)
                a0 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x0 + b * 32), a0)
                a1 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x1 + b * 32), a1)
                a2 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x2 + b * 32), a2)
                a3 = _mm256_fmadd_ps(dv, dot(q0, q1, q2, q3, x3 + b * 32), a3)
                p += 34
            }
            store(r, tile, a0.sum(), a1.sum(), a2.sum(), a3.sum())
        }
    }

    @inline(__always)
    private static func store(_ r: Int, _ tile: TileVectors, _ v0: Float, _ v1: Float, _ v2: Float, _ v3: Float) {
        tile.y[0][r] = v0
        if tile.active > 1 { tile.y[1][r] = v1 }
        if tile.active > 2 { tile.y[2][r] = v2 }
        if tile.active > 3 { tile.y[3][r] = v3 }
    }
#endif
}
