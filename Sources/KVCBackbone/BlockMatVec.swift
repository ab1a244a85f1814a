import KVCCore
import KVCGGUF
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// Matrix-vector products that read ggml blocks directly: each 32-weight block is widened to float32 in registers
/// and multiplied with fused multiply-add, accumulating in float32 (no quantization of the activations, unlike
/// llama.cpp's Q8 dot products, so the result equals the float32 product of the dequantized weights up to
/// summation order).
///
/// For the 4-bit formats the block offset is factored out: with `w = d·q + m`, `w·x = d·(q·x) + m·Σx`, and the
/// block sums `Σx` are computed once per vector and shared by all rows.
///
/// Measured alternative: 16-bit fixed-point activations with integer multiply-adds (`vpmaddwd`) took as much CPU
/// time per token here (decoding is bound by streaming the weights) and lost accuracy on the hidden states' outlier
/// channels (a block holding one large value quantizes its small neighbours coarsely), so the float path stays.
/// Batches can opt into bfloat16 activations instead (`WeightProducts.bfloat16`, `BFloat16Tile`): a floating-point
/// format keeps the outliers' range, and one `vdpbf16ps` per vector and block makes extra sequences cheap.
/// Two rows per iteration (sharing the loads of x) measured 25% slower than one, and two accumulators per row
/// (even/odd blocks) 5% slower (`kvc-bench decode`, tokens per CPU-second, one thread).
enum BlockMatVec {
    static func run(_ w: WeightMatrix, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, threads: Int) {
        let cols = w.cols
        let blockSums = UnsafeMutablePointer<Float>.allocate(capacity: max(cols / 32, 1))
        defer { blockSums.deallocate() }
        for b in 0..<cols / 32 {
            var s: Float = 0
            for j in 0..<32 { s += x[b * 32 + j] }
            blockSums[b] = s
        }
        let sums = UnsafePointer(blockSums)
        guard threads > 1, w.rows >= 128 else {
            rows(w, 0..<w.rows, x: x, blockSums: sums, y: y)
            return
        }
        // Several chunks per thread, handed out dynamically (the calling thread takes part): when one thread
        // is descheduled, the other takes its share instead of waiting for it.
        let chunks = min(threads * chunksPerThread, w.rows / 64)
        let chunk = (w.rows + chunks - 1) / chunks
        DecodeThreadPool.shared(threads: threads).run(chunks: chunks) { t in
            let lo = t * chunk, hi = min(w.rows, lo + chunk)
            if lo < hi { rows(w, lo..<hi, x: x, blockSums: sums, y: y) }
        }
    }

    /// Chunks per thread of a parallel product (1 = a fixed half each).
    static let chunksPerThread = 4

    /// Computes `y[r]` for the rows in `range`, which may span segments.
    static func rows(_ w: WeightMatrix, _ range: Range<Int>, x: UnsafePointer<Float>, blockSums: UnsafePointer<Float>,
                     y: UnsafeMutablePointer<Float>) {
        for segment in w.segments {
            let lo = max(range.lowerBound, segment.rows.lowerBound), hi = min(range.upperBound, segment.rows.upperBound)
            guard lo < hi else { continue }
            let first = UnsafeRawPointer(segment.data) + (lo - segment.rows.lowerBound) * segment.rowBytes
            let out = y + lo
            let n = hi - lo
            switch segment.format {
            case .q4_1: q4(first, rows: n, rowBytes: segment.rowBytes, cols: w.cols, x: x, blockSums: blockSums, y: out, hasMin: true)
            case .q4_0: q4(first, rows: n, rowBytes: segment.rowBytes, cols: w.cols, x: x, blockSums: blockSums, y: out, hasMin: false)
            case .q8_0: q8_0(first, rows: n, rowBytes: segment.rowBytes, cols: w.cols, x: x, y: out)
            case .f16: f16(first, rows: n, cols: w.cols, x: x, y: out)
            case .f32:
                BLAS.gemv(rows: n, cols: w.cols, a: first.assumingMemoryBound(to: Float.self), x: x, y: out)
            }
        }
    }

#if arch(x86_64)
    /// Q4_1 (`d`, `m`, 16 bytes) and Q4_0 (`d`, 16 bytes; `w = d·(q - 8)`, so `m = -8d`). Byte j holds element j
    /// in its low nibble and element j + 16 in its high nibble.
    private static func q4(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int, x: UnsafePointer<Float>,
                           blockSums: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, hasMin: Bool) {
        let blocks = cols / 32
        let blockBytes = hasMin ? 20 : 18
        let nibble = _mm_set1_epi8(0x0F)
        for r in 0..<rows {
            var p = w + r * rowBytes
            var acc = _mm256_setzero_ps()
            var offsetSum: Float = 0
            for b in 0..<blocks {
                let d = GGMLBlock.half(p)
                let m = hasMin ? GGMLBlock.half(p, 2) : -8 * d
                let s = WidenedBlock.q4(p, hasMin: hasMin, nibble: nibble).dot(x + b * 32)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc)
                offsetSum += m * blockSums[b]
                p += blockBytes
            }
            y[r] = acc.sum() + offsetSum
        }
    }

    /// Q8_0: `d` then 32 signed bytes, `w = d·q`.
    private static func q8_0(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int, x: UnsafePointer<Float>,
                             y: UnsafeMutablePointer<Float>) {
        let blocks = cols / 32
        for r in 0..<rows {
            var p = w + r * rowBytes
            var acc = _mm256_setzero_ps()
            for b in 0..<blocks {
                let d = GGMLBlock.half(p)
                let s = WidenedBlock.q8_0(p).dot(x + b * 32)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc)
                p += 34
            }
            y[r] = acc.sum()
        }
    }

    private static func f16(_ w: UnsafeRawPointer, rows: Int, cols: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let p = w + r * cols * 2
            var acc = _mm256_setzero_ps()
            var j = 0
            while j + 8 <= cols {
                let h = (p + 2 * j).loadUnaligned(as: __m128i.self)
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(x + j), acc)
                j += 8
            }
            var tail: Float = 0
            while j < cols { tail += GGMLBlock.half(p, 2 * j) * x[j]; j += 1 }
            y[r] = acc.sum() + tail
        }
    }
#else
    // Portable path: dequantize one row at a time, then a dot product.
    private static func q4(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int, x: UnsafePointer<Float>,
                           blockSums: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, hasMin: Bool) {
        viaRows(hasMin ? .q4_1 : .q4_0, w, rows: rows, rowBytes: rowBytes, cols: cols, x: x, y: y)
    }
    private static func q8_0(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int, x: UnsafePointer<Float>,
                             y: UnsafeMutablePointer<Float>) {
        viaRows(.q8_0, w, rows: rows, rowBytes: rowBytes, cols: cols, x: x, y: y)
    }
    private static func f16(_ w: UnsafeRawPointer, rows: Int, cols: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        viaRows(.f16, w, rows: rows, rowBytes: cols * 2, cols: cols, x: x, y: y)
    }
    private static func viaRows(_ type: GGMLType, _ w: UnsafeRawPointer, rows: Int, rowBytes: Int, cols: Int,
                                x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let row = UnsafeMutablePointer<Float>.allocate(capacity: cols)
        defer { row.deallocate() }
        for r in 0..<rows {
            try? GGMLQuant.dequantizeRow(type, w + r * rowBytes, row, count: cols)
            y[r] = BLAS.dot(n: cols, x: row, y: x)
        }
    }
#endif
}
