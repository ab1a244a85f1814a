import Foundation
import KVCCore

/// The SigLIP vision tower of Idefics3 / SmolVLM (`Idefics3VisionTransformer`), inference only, float32:
///
/// 1. patch embedding: the stride-`p` convolution `Conv2d(3, hidden, p, p)` is a matrix product of the unfolded
///    `[patches, 3·p·p]` pixels with the kernel viewed as `[hidden, 3·p·p]`, plus its bias;
/// 2. learned position embedding per patch (a full square image: patch `n` gets position `n`, which is what
///    transformers' bucketised position ids reduce to when no patch is masked);
/// 3. pre-norm encoder blocks: `x += attn(LN1(x))`, `x += fc2(gelu_tanh(fc1(LN2(x))))`, bidirectional attention
///    with biases on q/k/v/out;
/// 4. post layer norm.
public final class SigLIPVisionTransformer {
    public let config: SigLIPVisionConfig
    private let patchEmbedding: DenseLinear
    private let positionEmbedding: [Float]
    private let layers: [EncoderLayer]
    private let postLayerNorm: LayerNorm

    /// Loads the tensors under `prefix` (`"model.vision_model."` in an Idefics3 checkpoint).
    /// - Throws: `KVCError` naming the file and tensor that is missing or mis-shaped.
    public init(checkpoint: HFCheckpoint, config: SigLIPVisionConfig, prefix: String = "model.vision_model.") throws {
        self.config = config
        let h = config.hiddenSize, p = config.patchSize
        let kernel = try checkpoint.floats(prefix + "embeddings.patch_embedding.weight", shape: [h, config.channels, p, p])
        let kernelBias = try checkpoint.floats(prefix + "embeddings.patch_embedding.bias", shape: [h])
        patchEmbedding = DenseLinear(weight: kernel, bias: kernelBias, in: config.channels * p * p, out: h)
        positionEmbedding = try checkpoint.floats(prefix + "embeddings.position_embedding.weight", shape: [config.patchCount, h])
        layers = try (0..<config.layerCount).map {
            try EncoderLayer(checkpoint, prefix + "encoder.layers.\($0).", config: config)
        }
        postLayerNorm = try LayerNorm(checkpoint, prefix + "post_layernorm", width: h, epsilon: config.layerNormEpsilon)
    }

    /// Encodes one preprocessed image, planar `[3, imageSize, imageSize]`, to `[patchCount, hiddenSize]` row-major
    /// (patches in raster order).
    public func encode(pixels: [Float]) -> [Float] {
        let c = config, side = c.imageSize, p = c.patchSize, n = c.patchCount
        precondition(pixels.count == c.channels * side * side, "SigLIPVisionTransformer.encode: expected [3, \(side), \(side)] pixels")
        // Unfold: row n = patch (py, px), column = channel·p² + ky·p + kx, the order of the conv kernel's elements.
        var patches = [Float](repeating: 0, count: n * c.channels * p * p)
        let perPatch = c.channels * p * p
        for py in 0..<c.patchesPerSide {
            for px in 0..<c.patchesPerSide {
                let row = (py * c.patchesPerSide + px) * perPatch
                for ch in 0..<c.channels {
                    for ky in 0..<p {
                        let src = ch * side * side + (py * p + ky) * side + px * p
                        let dst = row + ch * p * p + ky * p
                        for kx in 0..<p { patches[dst + kx] = pixels[src + kx] }
                    }
                }
            }
        }
        var x = patchEmbedding.apply(patches, rows: n)
        for i in 0..<x.count { x[i] += positionEmbedding[i] }
        for layer in layers { layer.forward(&x, count: n) }
        return postLayerNorm.apply(x, rows: n)
    }
}

/// One pre-norm SigLIP block.
private struct EncoderLayer {
    let norm1: LayerNorm
    let query: DenseLinear
    let key: DenseLinear
    let value: DenseLinear
    let output: DenseLinear
    let norm2: LayerNorm
    let fc1: DenseLinear
    let fc2: DenseLinear
    let headCount: Int

    init(_ checkpoint: HFCheckpoint, _ prefix: String, config c: SigLIPVisionConfig) throws {
        let h = c.hiddenSize
        norm1 = try LayerNorm(checkpoint, prefix + "layer_norm1", width: h, epsilon: c.layerNormEpsilon)
        query = try DenseLinear(checkpoint, prefix + "self_attn.q_proj", in: h, out: h, bias: true)
        key = try DenseLinear(checkpoint, prefix + "self_attn.k_proj", in: h, out: h, bias: true)
        value = try DenseLinear(checkpoint, prefix + "self_attn.v_proj", in: h, out: h, bias: true)
        output = try DenseLinear(checkpoint, prefix + "self_attn.out_proj", in: h, out: h, bias: true)
        norm2 = try LayerNorm(checkpoint, prefix + "layer_norm2", width: h, epsilon: c.layerNormEpsilon)
        fc1 = try DenseLinear(checkpoint, prefix + "mlp.fc1", in: h, out: c.intermediateSize, bias: true)
        fc2 = try DenseLinear(checkpoint, prefix + "mlp.fc2", in: c.intermediateSize, out: h, bias: true)
        headCount = c.headCount
    }

    func forward(_ x: inout [Float], count n: Int) {
        let normed = norm1.apply(x, rows: n)
        let attended = output.apply(attention(normed, count: n), rows: n)
        for i in 0..<x.count { x[i] += attended[i] }
        var hidden = fc1.apply(norm2.apply(x, rows: n), rows: n)
        for i in 0..<hidden.count { hidden[i] = geluTanh(hidden[i]) }
        let mlp = fc2.apply(hidden, rows: n)
        for i in 0..<x.count { x[i] += mlp[i] }
    }

    /// Multi-head softmax attention of every patch over every patch; heads are column blocks of the `[n, hidden]`
    /// projections, handled by strided gemms.
    private func attention(_ x: [Float], count n: Int) -> [Float] {
        let h = query.outFeatures, d = h / headCount
        let q = query.apply(x, rows: n), k = key.apply(x, rows: n), v = value.apply(x, rows: n)
        var out = [Float](repeating: 0, count: n * h)
        var scores = [Float](repeating: 0, count: n * n)
        let scale = 1 / Float(d).squareRoot()
        q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in scores.withUnsafeMutableBufferPointer { sp in
                for head in 0..<headCount {
                    let offset = head * d
                    BLAS.gemm(transB: true, m: n, n: n, k: d, alpha: scale, a: qp.baseAddress! + offset, lda: h,
                              b: kp.baseAddress! + offset, ldb: h, c: sp.baseAddress!)
                    for r in 0..<n { softmaxInPlace(sp.baseAddress! + r * n, count: n) }
                    BLAS.gemm(m: n, n: d, k: n, a: sp.baseAddress!, b: vp.baseAddress! + offset, ldb: h,
                              c: op.baseAddress! + offset, ldc: h)
                }
            } }
        } } }
        return out
    }
}

/// Numerically stable softmax of one row.
func softmaxInPlace(_ row: UnsafeMutablePointer<Float>, count: Int) {
    var maximum = -Float.infinity
    for j in 0..<count { maximum = max(maximum, row[j]) }
    var sum: Float = 0
    for j in 0..<count { row[j] = expf(row[j] - maximum); sum += row[j] }
    let inverse = 1 / sum
    for j in 0..<count { row[j] *= inverse }
}
