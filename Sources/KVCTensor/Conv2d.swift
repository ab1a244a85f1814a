import KVCCore

// 2-D convolution as im2col + GEMM: each image's receptive fields are unrolled into a [C·kh·kw, Ho·Wo] matrix so
// the convolution is one matrix product with the weight viewed as [O, C·kh·kw]. The backward recomputes the
// unrolled matrix instead of keeping it (it is kh·kw times larger than the input).

/// input [N, C, H, W], weight [O, C, kh, kw], bias [O] → [N, O, Ho, Wo] with Ho = (H + 2·padding - kh) / stride + 1.
public func conv2d(_ input: Tensor, weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
    shapeCheck(input.rank == 4 && weight.rank == 4 && input.shape[1] == weight.shape[1], "conv2d",
               "input [N, C, H, W] = \(input.shape) and weight [O, C, kh, kw] = \(weight.shape) do not match")
    shapeCheck(stride >= 1 && padding >= 0, "conv2d", "stride \(stride) must be ≥ 1 and padding \(padding) ≥ 0")
    let geo = ConvGeometry(n: input.shape[0], c: input.shape[1], h: input.shape[2], w: input.shape[3],
                           o: weight.shape[0], kh: weight.shape[2], kw: weight.shape[3], stride: stride, padding: padding)
    shapeCheck(geo.ho > 0 && geo.wo > 0, "conv2d",
               "kernel \(weight.shape[2])x\(weight.shape[3]) does not fit input \(input.shape) with padding \(padding)")
    if let bias { shapeCheck(bias.shape == [geo.o], "conv2d", "bias \(bias.shape) should be [\(geo.o)]") }

    let out = Tensor(uninitializedShape: [geo.n, geo.o, geo.ho, geo.wo])
    let cols = TensorStorage(count: geo.colRows * geo.spatial)
    for i in 0..<geo.n {
        geo.im2col(input.data + i * geo.imageSize, cols.pointer)
        let o = out.data + i * geo.o * geo.spatial
        if let bias {
            for ch in 0..<geo.o { (o + ch * geo.spatial).initialize(repeating: bias.data[ch], count: geo.spatial) }
        }
        BLAS.gemm(m: geo.o, n: geo.spatial, k: geo.colRows, a: weight.data, b: cols.pointer,
                  beta: bias == nil ? 0 : 1, c: o)
    }
    out.record([input, weight] + [bias].compactMap { $0 }) { _, g in
        let cols = TensorStorage(count: geo.colRows * geo.spatial)
        for i in 0..<geo.n {
            let gi = g + i * geo.o * geo.spatial
            if weight.requiresGrad {  // dW += G_i · colsᵀ
                geo.im2col(input.data + i * geo.imageSize, cols.pointer)
                weight.accumulateGrad { gw, overwrite in
                    BLAS.gemm(transB: true, m: geo.o, n: geo.colRows, k: geo.spatial, a: gi, b: cols.pointer,
                              beta: overwrite ? 0 : 1, c: gw)
                }
            }
            if input.requiresGrad {   // dcols = Wᵀ · G_i, folded back onto the image
                BLAS.gemm(transA: true, m: geo.colRows, n: geo.spatial, k: geo.o, a: weight.data, b: gi, c: cols.pointer)
                geo.col2imAdd(cols.pointer, input.gradBufferForScatter() + i * geo.imageSize)
            }
        }
        if let bias, bias.requiresGrad {
            let gb = bias.gradBufferForScatter()
            for i in 0..<geo.n {
                for ch in 0..<geo.o {
                    let row = g + (i * geo.o + ch) * geo.spatial
                    var s: Float = 0
                    for j in 0..<geo.spatial { s += row[j] }
                    gb[ch] += s
                }
            }
        }
    }
    return out
}

private struct ConvGeometry {
    let n, c, h, w, o, kh, kw, stride, padding: Int
    var ho: Int { (h + 2 * padding - kh) / stride + 1 }
    var wo: Int { (w + 2 * padding - kw) / stride + 1 }
    var spatial: Int { ho * wo }
    var colRows: Int { c * kh * kw }
    var imageSize: Int { c * h * w }

    init(n: Int, c: Int, h: Int, w: Int, o: Int, kh: Int, kw: Int, stride: Int, padding: Int) {
        (self.n, self.c, self.h, self.w, self.o, self.kh, self.kw, self.stride, self.padding) =
            (n, c, h, w, o, kh, kw, stride, padding)
    }

    /// cols[(ch·kh + ky)·kw + kx, oy·Wo + ox] = image[ch, oy·stride + ky - padding, ox·stride + kx - padding] (0 outside).
    func im2col(_ image: UnsafePointer<Float>, _ cols: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (self.ho, self.wo)
        for ch in 0..<c {
            for ky in 0..<kh {
                for kx in 0..<kw {
                    let row = cols + ((ch * kh + ky) * kw + kx) * ho * wo
                    for oy in 0..<ho {
                        let y = oy * stride + ky - padding
                        let dst = row + oy * wo
                        if y < 0 || y >= h { dst.initialize(repeating: 0, count: wo); continue }
                        let src = image + (ch * h + y) * w
                        for ox in 0..<wo {
                            let x = ox * stride + kx - padding
                            dst[ox] = x >= 0 && x < w ? src[x] : 0
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of im2col: adds every column entry back onto the pixel it was read from.
    func col2imAdd(_ cols: UnsafePointer<Float>, _ image: UnsafeMutablePointer<Float>) {
        let (ho, wo) = (self.ho, self.wo)
        for ch in 0..<c {
            for ky in 0..<kh {
                for kx in 0..<kw {
                    let row = cols + ((ch * kh + ky) * kw + kx) * ho * wo
                    for oy in 0..<ho {
                        let y = oy * stride + ky - padding
                        if y < 0 || y >= h { continue }
                        let dst = image + (ch * h + y) * w
                        for ox in 0..<wo {
                            let x = ox * stride + kx - padding
                            if x >= 0 && x < w { dst[x] += row[oy * wo + ox] }
                        }
                    }
                }
            }
        }
    }
}
