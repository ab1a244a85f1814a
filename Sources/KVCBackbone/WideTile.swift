import CDecodeKernels

/// The AVX-512 form of `BlockMatMat`'s tiles (`kvc_wide_tile` in CDecodeKernels): up to 16 vectors share one pass
/// over the weights, two per 512-bit register, each lane doing what a lane of the 256-bit single-vector kernel
/// does, so every result is still bit-identical to `BlockMatVec`'s.
///
/// On the 2-core AMD EPYC (Zen 5, full-width 512-bit FMA) this project runs on, `kvc-bench decode --batch` at 1 thread
/// and 587 cached tokens, tokens per CPU-second against the 256-bit tiles in alternation: batch 2 113 -> 146,
/// batch 4 148 -> 182-192, batch 8 147 -> 181-193, batch 9 135 -> 175-183, batch 16 150 -> 185-191.
final class WideTile {
    /// Whether the CPU runs the kernel; the batched products fall back to the 256-bit tiles otherwise (and tests
    /// switch it off to check both paths).
    nonisolated(unsafe) static var enabled = kvc_wide_tile_supported() != 0
    static let capacity = Int(kvc_wide_tile_max)

    let vectors: Range<Int>
    /// The vectors interleaved two by two, `[pairs][blocks][4][16]` (the kernel's layout).
    let xPairs: UnsafeMutablePointer<Float>
    /// `[blocks][16]`: block sums, one lane per vector.
    let sums: UnsafeMutablePointer<Float>

    /// Lays out `vectors` of `x` `[count][cols]` and their block sums `[count][cols / 32]` for the kernel.
    init(vectors: Range<Int>, x: UnsafePointer<Float>, cols: Int, blockSums: UnsafePointer<Float>) {
        precondition(!vectors.isEmpty && vectors.count <= Self.capacity, "WideTile: 1...\(Self.capacity) vectors")
        self.vectors = vectors
        let blocks = cols / 32, pairs = (vectors.count + 1) / 2
        xPairs = .allocate(capacity: pairs * blocks * 64)
        sums = .allocate(capacity: blocks * Self.capacity)
        sums.initialize(repeating: 0, count: blocks * Self.capacity)
        for p in 0..<pairs {
            for half in 0..<2 {
                // The second half of a last odd pair repeats the first (computed, never stored).
                let v = vectors.lowerBound + min(2 * p + half, vectors.count - 1)
                for b in 0..<blocks {
                    for k in 0..<4 {
                        (xPairs + ((p * blocks + b) * 4 + k) * 16 + half * 8).initialize(from: x + v * cols + b * 32 + k * 8, count: 8)
                    }
                }
            }
        }
        for (lane, v) in vectors.enumerated() {
            for b in 0..<blocks { sums[b * Self.capacity + lane] = blockSums[v * blocks + b] }
        }
    }

    deinit {
        xPairs.deallocate()
        sums.deallocate()
    }

    /// The kernel's code for a format, or nil when it has none (F16 and F32 rows).
    static func code(_ format: BlockFormat) -> Int32? {
        switch format {
        case .q4_1: return Int32(kvc_format_q4_1)
        case .q4_0: return Int32(kvc_format_q4_0)
        case .q8_0: return Int32(kvc_format_q8_0)
        case .f16, .f32: return nil
        }
    }

    /// Rows `range` of `w` times this tile's vectors into `y` `[count][w.rows]`.
    func rows(_ w: WeightMatrix, _ range: Range<Int>, x: UnsafePointer<Float>, blockSums: UnsafePointer<Float>,
              y: UnsafeMutablePointer<Float>) {
        BlockMatMat.tileSegments(w, range, vectors: vectors, x: x, blockSums: blockSums, y: y) { code, first, rows, rowBytes in
            kvc_wide_tile(code, first, rows.count, rowBytes, w.cols / 32, xPairs, sums,
                          y + vectors.lowerBound * w.rows + rows.lowerBound, w.rows, Int32(vectors.count))
        }
    }
}
