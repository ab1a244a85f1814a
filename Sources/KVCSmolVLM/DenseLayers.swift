import Foundation
import KVCCore

/// A linear map `y = x·Wᵀ + b` over row-major batches, on float32 weights from a checkpoint (`W` is `[out, in]` as
/// PyTorch stores it), computed with one BLAS gemm per call.
struct DenseLinear {
    let inFeatures: Int
    let outFeatures: Int
    let weight: [Float]
    let bias: [Float]?

    /// Loads `name.weight` `[out, in]` and, when `bias`, `name.bias` `[out]`.
    init(_ checkpoint: HFCheckpoint, _ name: String, in inFeatures: Int, out outFeatures: Int, bias: Bool) throws {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        weight = try checkpoint.floats(name + ".weight", shape: [outFeatures, inFeatures])
        self.bias = bias ? try checkpoint.floats(name + ".bias", shape: [outFeatures]) : nil
    }

    init(weight: [Float], bias: [Float]?, in inFeatures: Int, out outFeatures: Int) {
        precondition(weight.count == inFeatures * outFeatures && (bias?.count ?? outFeatures) == outFeatures)
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.weight = weight
        self.bias = bias
    }

    /// `y[rows][out] = x[rows][in] · Wᵀ + b`.
    func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { w in
            BLAS.gemm(transB: true, m: rows, n: outFeatures, k: inFeatures, a: x, b: w.baseAddress!, c: y)
        }
        guard let bias else { return }
        bias.withUnsafeBufferPointer { b in
            for r in 0..<rows {
                let row = y + r * outFeatures
                for j in 0..<outFeatures { row[j] += b[j] }
            }
        }
    }

    func apply(_ x: [Float], rows: Int) -> [Float] {
        precondition(x.count == rows * inFeatures, "DenseLinear: \(x.count) inputs for \(rows) rows of \(inFeatures)")
        var y = [Float](repeating: 0, count: rows * outFeatures)
        x.withUnsafeBufferPointer { xs in y.withUnsafeMutableBufferPointer { apply(xs.baseAddress!, rows: rows, into: $0.baseAddress!) } }
        return y
    }
}

/// `nn.LayerNorm` over the last dimension: `(x - mean) / sqrt(var + eps) · weight + bias`, biased variance.
struct LayerNorm {
    let weight: [Float]
    let bias: [Float]
    let epsilon: Float

    init(_ checkpoint: HFCheckpoint, _ name: String, width: Int, epsilon: Float) throws {
        weight = try checkpoint.floats(name + ".weight", shape: [width])
        bias = try checkpoint.floats(name + ".bias", shape: [width])
        self.epsilon = epsilon
    }

    func apply(_ x: [Float], rows: Int) -> [Float] {
        let width = weight.count
        var out = [Float](repeating: 0, count: x.count)
        for r in 0..<rows {
            let base = r * width
            var mean: Float = 0
            for j in 0..<width { mean += x[base + j] }
            mean /= Float(width)
            var variance: Float = 0
            for j in 0..<width { let d = x[base + j] - mean; variance += d * d }
            variance /= Float(width)
            let scale = 1 / (variance + epsilon).squareRoot()
            for j in 0..<width { out[base + j] = (x[base + j] - mean) * scale * weight[j] + bias[j] }
        }
        return out
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
@inline(__always)
func geluTanh(_ x: Float) -> Float {
    0.5 * x * (1 + tanh(0.797_884_560_8 * (x + 0.044_715 * x * x * x)))
}
