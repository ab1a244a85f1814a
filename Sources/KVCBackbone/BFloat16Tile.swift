import CDecodeKernels

/// The arithmetic of decoding's weight products (one token per sequence; prefill always runs float32 gemm).
public enum WeightProducts: String, Sendable, CaseIterable {
    /// Weights widened to float32, activations float32: every product equals the float32 product of the dequantized
    /// weights up to summation order, and a batch row equals the single-vector result bit for bit (the default).
    case float32
    /// Dequantized weights and activations rounded to bfloat16 (8 significant bits; float32 range, so the hidden
    /// states' outlier channels keep their size), summed in float32 by `vdpbf16ps`: one instruction per vector and
    /// block instead of two and a half, so each extra sequence of a batch costs less than half as much. Needs
    /// AVX-512 BF16 (`BFloat16Tile.supported`); without it `LlamaModel.weightProducts` stays float32.
    case bfloat16
}

/// `kvc_bf16_tile`'s inputs for a batch of vectors: each rounded to bfloat16 once per product.
final class BFloat16Tile {
    static let supported = kvc_bf16_tile_supported() != 0

    let count: Int
    let cols: Int
    /// `[count][cols]` bfloat16 bit patterns.
    let x: UnsafeMutablePointer<UInt16>

    init(x source: UnsafePointer<Float>, count: Int, cols: Int) {
        precondition(count >= 1 && cols % 32 == 0)
        self.count = count
        self.cols = cols
        x = .allocate(capacity: count * cols)
        kvc_to_bf16(source, x, count * cols)
    }

    deinit { x.deallocate() }

    /// Rows `range` of `w` times vectors `vectors` (at most `WideTile.capacity`) into `y` `[count][w.rows]`.
    /// Segments with no block kernel (F16, F32 rows) take the float32 single-vector kernel on the original `source`.
    func rows(_ w: WeightMatrix, _ range: Range<Int>, vectors: Range<Int>, source: UnsafePointer<Float>,
              blockSums: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        BlockMatMat.tileSegments(w, range, vectors: vectors, x: source, blockSums: blockSums, y: y) { code, first, rows, rowBytes in
            kvc_bf16_tile(code, first, rows.count, rowBytes, w.cols / 32, x + vectors.lowerBound * cols, cols,
                          y + vectors.lowerBound * w.rows + rows.lowerBound, w.rows, Int32(vectors.count))
        }
    }
}
