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
/// passes over them. Where the CPU has AVX-512, `WideTile` serves up to 16 vectors a pass instead of 4.
enum BlockMatMat {
    /// Vectors sharing one pass over the weights (four accumulators plus the dequantized block fit the 16 AVX registers).
    static let tile = 4

    /// `y[i][r] = W[r] · x[i]` for `count` vectors `x` `[count][cols]`; `y` is `[count][rows]`.
    static func run(_ w: WeightMatrix, x: UnsafePointer<Float>, count: Int, y: UnsafeMutablePointer<Float>, threads: Int,
                    products: WeightProducts = .float32) {
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
        let eachChunk = { (body: (Range<Int>) -> Void) in
            withoutActuallyEscaping(body) { body in
                let perform: (Int) -> Void = { c in
                    let lo = c * chunk, hi = min(w.rows, lo + chunk)
                    if lo < hi { body(lo..<hi) }
                }
                if threads > 1 && chunks > 1 {
                    DecodeThreadPool.shared(threads: threads).run(chunks: chunks, perform)
                } else {
                    for c in 0..<chunks { perform(c) }
                }
            }
        }
        if products == .bfloat16 && BFloat16Tile.supported {
            let tile = BFloat16Tile(x: x, count: count, cols: cols)
            let passes = Self.passes(count, of: WideTile.capacity)
            eachChunk { rows in
                for vectors in passes { tile.rows(w, rows, vectors: vectors, source: x, blockSums: sums, y: y) }
            }
            return
        }
        if WideTile.enabled {
            // Up to 16 vectors a pass (AVX-512, two vectors a register).
            let tiles = Self.passes(count, of: WideTile.capacity).map { WideTile(vectors: $0, x: x, cols: cols, blockSums: sums) }
            eachChunk { rows in
                for tile in tiles { tile.rows(w, rows, x: x, blockSums: sums, y: y) }
            }
            return
        }
        // A lone vector leaves its pass latency-bound on one accumulator chain, hence 9 = 3+3+3, not 4+4+1.
        let passes = Self.passes(count, of: tile)
        eachChunk { rows in
            for vectors in passes { Self.rows(w, rows, x: x, blockSums: sums, vectors: vectors, y: y) }
        }
    }

    /// `count` vectors in as few passes of at most `capacity` as possible, spread evenly over them.
    static func passes(_ count: Int, of capacity: Int) -> [Range<Int>] {
        let n = (count + capacity - 1) / capacity
        return (0..<n).map { ($0 * count / n)..<(($0 + 1) * count / n) }
    }

    /// Walks the segments of `w` overlapping `range`: `kernel(format code, first row's blocks, rows, row bytes)` where the
    /// AVX-512 tile kernels read the format, the float32 single-vector kernel for each of `vectors` otherwise (F16,
    /// F32 rows; `x` float32 `[count][cols]`, `y` `[count][w.rows]`).
    static func tileSegments(_ w: WeightMatrix, _ range: Range<Int>, vectors: Range<Int>, x: UnsafePointer<Float>,
                             blockSums: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                             kernel: (Int32, UnsafePointer<UInt8>, Range<Int>, Int) -> Void) {
        let blocks = w.cols / 32
        for segment in w.segments {
            let lo = max(range.lowerBound, segment.rows.lowerBound), hi = min(range.upperBound, segment.rows.upperBound)
            guard lo < hi else { continue }
            guard let code = WideTile.code(segment.format) else {
                for i in vectors {
                    BlockMatVec.rows(w, lo..<hi, x: x + i * w.cols, blockSums: blockSums + i * blocks, y: y + i * w.rows)
                }
                continue
            }
            let first = UnsafeRawPointer(segment.data) + (lo - segment.rows.lowerBound) * segment.rowBytes
            kernel(code, first.assumingMemoryBound(to: UInt8.self), lo..<hi, segment.rowBytes)
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
            let t = Tile(vectors: vectors, x: x, cols: cols, blockSums: blockSums, y: y + lo, rows: w.rows)
            let n = hi - lo, stride = segment.rowBytes
            switch segment.format {
            case .q4_1: t.dispatch { q4(first, rows: n, rowBytes: stride, blocks: blocks, tile: t, active: $0, hasMin: true) }; continue
            case .q4_0: t.dispatch { q4(first, rows: n, rowBytes: stride, blocks: blocks, tile: t, active: $0, hasMin: false) }; continue
            case .q8_0: t.dispatch { q8_0(first, rows: n, rowBytes: stride, blocks: blocks, tile: t, active: $0) }; continue
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
    /// The vectors of one tile: inputs, block sums and output rows (already offset to the chunk's first row). Slots
    /// past `count` repeat the first vector and are never computed.
    private struct Tile {
        let count: Int
        let x0, x1, x2, x3: UnsafePointer<Float>
        let s0, s1, s2, s3: UnsafePointer<Float>
        let y0, y1, y2, y3: UnsafeMutablePointer<Float>

        init(vectors: Range<Int>, x: UnsafePointer<Float>, cols: Int, blockSums: UnsafePointer<Float>,
             y: UnsafeMutablePointer<Float>, rows: Int) {
            precondition(!vectors.isEmpty && vectors.count <= BlockMatMat.tile, "BlockMatMat: a tile holds 1...4 vectors")
            count = vectors.count
            let v0 = vectors.lowerBound, last = vectors.upperBound - 1
            let v1 = min(v0 + 1, last), v2 = min(v0 + 2, last), v3 = min(v0 + 3, last)
            let blocks = cols / 32
            (x0, x1, x2, x3) = (x + v0 * cols, x + v1 * cols, x + v2 * cols, x + v3 * cols)
            (s0, s1, s2, s3) = (blockSums + v0 * blocks, blockSums + v1 * blocks, blockSums + v2 * blocks, blockSums + v3 * blocks)
            (y0, y1, y2, y3) = (y + v0 * rows, y + v1 * rows, y + v2 * rows, y + v3 * rows)
        }

        /// Calls `kernel` with the tile's vector count as a literal, so each inlined copy keeps only the accumulators
        /// it uses (a tile of two does half the work of a tile of four, from the same widened blocks).
        @inline(__always)
        func dispatch(_ kernel: (Int) -> Void) {
            switch count {
            case 1: kernel(1)
            case 2: kernel(2)
            case 3: kernel(3)
            default: kernel(4)
            }
        }

        @inline(__always)
        func store(_ r: Int, _ active: Int, _ v0: Float, _ v1: Float, _ v2: Float, _ v3: Float) {
            y0[r] = v0
            if active > 1 { y1[r] = v1 }
            if active > 2 { y2[r] = v2 }
            if active > 3 { y3[r] = v3 }
        }
    }

    /// `BlockMatVec.q4` for the `active` (1...4) vectors of a tile: the block is widened once, then each vector takes
    /// its four multiply-adds. `active` is a literal at every call (`Tile.dispatch`), so unused accumulators vanish.
    @inline(__always)
    private static func q4(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, blocks: Int, tile t: Tile, active: Int, hasMin: Bool) {
        let blockBytes = hasMin ? 20 : 18
        let nibble = _mm_set1_epi8(0x0F)
        for r in 0..<rows {
            var p = w + r * rowBytes
            var a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
            var o0: Float = 0, o1: Float = 0, o2: Float = 0, o3: Float = 0
            for b in 0..<blocks {
                let d = GGMLBlock.half(p)
                let m = hasMin ? GGMLBlock.half(p, 2) : -8 * d
                let q = WidenedBlock.q4(p, hasMin: hasMin, nibble: nibble)
                let dv = _mm256_set1_ps(d)
                a0 = _mm256_fmadd_ps(dv, q.dot(t.x0 + b * 32), a0)
                o0 += m * t.s0[b]
                if active > 1 {
                    a1 = _mm256_fmadd_ps(dv, q.dot(t.x1 + b * 32), a1)
                    o1 += m * t.s1[b]
                }
                if active > 2 {
                    a2 = _mm256_fmadd_ps(dv, q.dot(t.x2 + b * 32), a2)
                    o2 += m * t.s2[b]
                }
                if active > 3 {
                    a3 = _mm256_fmadd_ps(dv, q.dot(t.x3 + b * 32), a3)
                    o3 += m * t.s3[b]
                }
                p += blockBytes
            }
            t.store(r, active, a0.sum() + o0, a1.sum() + o1, a2.sum() + o2, a3.sum() + o3)
        }
    }

    /// `BlockMatVec.q8_0` for the `active` vectors of a tile.
    @inline(__always)
    private static func q8_0(_ w: UnsafeRawPointer, rows: Int, rowBytes: Int, blocks: Int, tile t: Tile, active: Int) {
        for r in 0..<rows {
            var p = w + r * rowBytes
            var a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
            for b in 0..<blocks {
                let d = GGMLBlock.half(p)
                let q = WidenedBlock.q8_0(p)
                let dv = _mm256_set1_ps(d)
                a0 = _mm256_fmadd_ps(dv, q.dot(t.x0 + b * 32), a0)
                if active > 1 { a1 = _mm256_fmadd_ps(dv, q.dot(t.x1 + b * 32), a1) }
                if active > 2 { a2 = _mm256_fmadd_ps(dv, q.dot(t.x2 + b * 32), a2) }
                if active > 3 { a3 = _mm256_fmadd_ps(dv, q.dot(t.x3 + b * 32), a3) }
                p += 34
            }
            t.store(r, active, a0.sum(), a1.sum(), a2.sum(), a3.sum())
        }
    }
#endif
}
