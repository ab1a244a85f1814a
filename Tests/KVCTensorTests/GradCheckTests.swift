import KVCCore
import XCTest
@testable import KVCTensor

/// A finite-difference gradient check for every op (see `gradCheck` for the tolerance argument).
final class GradCheckTests: XCTestCase {
    private var rng = SeededRandom(seed: 1234)

    private func randn(_ shape: [Int], std: Float = 1) -> Tensor { Tensor.randn(shape, std: std, rng: &rng) }
    /// Values with |x| in [0.2, 1.2): keeps relu and friends away from their kink by more than the step h.
    private func awayFromZero(_ shape: [Int]) -> Tensor {
        let t = Tensor.uniform(shape, low: 0.2, high: 1.2, rng: &rng)
        for i in 0..<t.count where rng.nextUniform() < 0.5 { t.data[i] = -t.data[i] }
        return t
    }
    private func positive(_ shape: [Int]) -> Tensor { Tensor.uniform(shape, low: 0.5, high: 2, rng: &rng) }

    /// Draws x, W (and b) until every pre-activation of x·Wᵀ + b is at least 0.15 from the ReLU kink, far more than
    /// a finite-difference step (h = 0.01) can move it.
    private func reluSafeLinearInputs(_ xShape: [Int], out: Int, bias: Bool) -> [Tensor] {
        while true {
            let inputs = [randn(xShape), randn([out, xShape.last!])] + (bias ? [randn([out])] : [])
            let pre = Tensor.withNoGrad { linear(inputs[0], weight: inputs[1], bias: bias ? inputs[2] : nil) }
            if pre.scalars.allSatisfy({ abs($0) > 0.15 }) { return inputs }
        }
    }

    private func check(_ inputs: [Tensor], _ label: String, file: StaticString = #filePath, line: UInt = #line,
                       _ f: ([Tensor]) -> Tensor) {
        let r = gradCheck(inputs, f)
        XCTAssertTrue(r.passed, "\(label): \(r)", file: file, line: line)
    }

    func testArithmeticSameShape() {
        check([randn([3, 4]), randn([3, 4])], "add") { $0[0] + $0[1] }
        check([randn([3, 4]), randn([3, 4])], "sub") { $0[0] - $0[1] }
        check([randn([3, 4]), randn([3, 4])], "mul") { $0[0] * $0[1] }
        check([randn([3, 4]), positive([3, 4])], "div") { $0[0] / $0[1] }
        // The same tensor on both sides: both contributions must add up.
        check([randn([5])], "x*x") { $0[0] * $0[0] }
    }

    func testArithmeticBroadcast() {
        check([randn([2, 3, 4]), randn([3, 1])], "add [2,3,4]+[3,1]") { $0[0] + $0[1] }
        check([randn([2, 1, 4]), randn([3, 1])], "sub [2,1,4]-[3,1]") { $0[0] - $0[1] }
        check([randn([4]), randn([2, 3, 4])], "mul [4]*[2,3,4]") { $0[0] * $0[1] }
        check([randn([2, 3]), positive([2, 1])], "div [2,3]/[2,1]") { $0[0] / $0[1] }
        check([randn([2, 3]), randn([])], "mul by scalar tensor") { $0[0] * $0[1] }
        check([randn([2, 3, 4]), randn([3, 4])], "sub row [2,3,4]-[3,4]") { $0[0] - $0[1] }
        check([randn([2, 3]), positive([1, 3])], "div row [2,3]/[1,3]") { $0[0] / $0[1] }
        check([positive([3]), positive([2, 3])], "div row-first [3]/[2,3]") { $0[0] / $0[1] }
    }

    func testPointwiseMath() {
        check([randn([7])], "affine") { $0[0] * 1.5 + 0.25 }
        check([randn([7])], "neg and scalar-minus") { 2 - (-$0[0]) }
        check([randn([7], std: 0.5)], "exp") { $0[0].exp() }
        check([positive([7])], "log") { $0[0].log() }
        check([positive([7])], "sqrt") { $0[0].sqrt() }
        check([randn([7])], "square") { $0[0].square() }
        check([positive([7])], "pow 1.7") { $0[0].pow(1.7) }
    }

    func testActivations() {
        check([awayFromZero([3, 5])], "relu") { $0[0].relu() }
        check([randn([3, 5])], "sigmoid") { $0[0].sigmoid() }
        check([randn([3, 5])], "tanh") { $0[0].tanh() }
        check([randn([3, 5])], "silu") { $0[0].silu() }
        check([randn([3, 5])], "gelu") { $0[0].gelu() }
    }

    func testSoftmaxFamily() {
        check([randn([3, 6])], "softmax last axis") { $0[0].softmax() }
        check([randn([4, 3, 2])], "softmax middle axis") { $0[0].softmax(axis: 1) }
        check([randn([3, 6])], "logSoftmax last axis") { $0[0].logSoftmax() }
        check([randn([4, 3, 2])], "logSoftmax axis 0") { $0[0].logSoftmax(axis: 0) }
    }

    func testReductions() {
        check([randn([2, 3, 4])], "sum axis 1") { $0[0].sum(axis: 1) }
        check([randn([2, 3, 4])], "sum axis -1 keepDims") { $0[0].sum(axis: -1, keepDims: true) }
        check([randn([2, 3, 4])], "mean axis 0") { $0[0].mean(axis: 0) }
        check([randn([2, 3, 4])], "sum axes [0, 2]") { $0[0].sum(axes: [0, 2]) }
        check([randn([2, 3, 4])], "mean axes [1, 2]") { $0[0].mean(axes: [2, 1]) }
        check([randn([2, 3, 4])], "sum all") { $0[0].sum() }
        check([randn([2, 3, 4])], "mean all") { $0[0].mean() }
        // Distinct values spaced 0.1 apart (> 2h), shuffled, so the argmax is unique and stable under ±h.
        var values = (0..<24).map { Float($0) * 0.1 }
        rng.shuffle(&values)
        check([Tensor(shape: [2, 3, 4], values: values)], "max axis 1") { $0[0].max(axis: 1) }
        check([Tensor(shape: [2, 3, 4], values: values)], "max axis -1 keepDims") { $0[0].max(axis: -1, keepDims: true) }
    }

    func testMatmul() {
        check([randn([3, 4]), randn([4, 5])], "matmul") { matmul($0[0], $0[1]) }
        check([randn([4, 3]), randn([4, 5])], "matmul Aᵀ") { matmul($0[0], $0[1], transposeA: true) }
        check([randn([3, 4]), randn([5, 4])], "matmul Bᵀ") { matmul($0[0], $0[1], transposeB: true) }
        check([randn([4, 3]), randn([5, 4])], "matmul AᵀBᵀ") { matmul($0[0], $0[1], transposeA: true, transposeB: true) }
        check([randn([2, 3, 4]), randn([2, 4, 5])], "batched matmul") { matmul($0[0], $0[1]) }
        check([randn([2, 4, 3]), randn([2, 5, 4])], "batched matmul AᵀBᵀ") {
            matmul($0[0], $0[1], transposeA: true, transposeB: true)
        }
        check([randn([2, 3, 4]), randn([4, 5])], "batched matmul, shared B") { matmul($0[0], $0[1]) }
        check([randn([2, 4, 3]), randn([5, 4])], "batched matmul Aᵀ, shared Bᵀ") {
            matmul($0[0], $0[1], transposeA: true, transposeB: true)
        }
        check([randn([2, 3, 4]), randn([5, 4]), randn([5])], "linear") { linear($0[0], weight: $0[1], bias: $0[2]) }
        check([randn([3, 4]), randn([5, 4])], "linear without bias") { linear($0[0], weight: $0[1]) }
        check(reluSafeLinearInputs([2, 3, 4], out: 5, bias: true), "linear + fused relu") {
            linear($0[0], weight: $0[1], bias: $0[2], activation: .relu)
        }
        check(reluSafeLinearInputs([3, 4], out: 5, bias: false), "linear + fused relu, no bias") {
            linear($0[0], weight: $0[1], activation: .relu)
        }
        check([randn([3, 4]), randn([5, 4]), randn([5])], "linear + gelu") {
            linear($0[0], weight: $0[1], bias: $0[2], activation: .gelu)
        }
    }

    func testNormalization() {
        check([randn([3, 6]), randn([6]), randn([6])], "layerNorm") { $0[0].layerNorm(weight: $0[1], bias: $0[2]) }
        check([randn([2, 2, 5])], "layerNorm without affine") { $0[0].layerNorm() }
        check([randn([3, 6]), randn([6])], "rmsNorm") { $0[0].rmsNorm(weight: $0[1]) }
        check([randn([3, 6])], "rmsNorm without weight") { $0[0].rmsNorm() }
    }

    func testShapeOps() {
        check([randn([2, 6])], "reshape") { $0[0].reshaped([3, -1]) * $0[0].reshaped([3, 4]) }
        check([randn([2, 3, 4])], "permute") { $0[0].permuted([2, 0, 1]) }
        check([randn([2, 3, 4])], "transpose") { $0[0].transposed(0, 2) }
        check([randn([3, 5, 2])], "slice") { $0[0].slice(axis: 1, 1..<4) }
        check([randn([2, 3]), randn([2, 1]), randn([2, 2])], "concat axis 1") { Tensor.concat($0, axis: 1) }
        check([randn([2, 3]), randn([1, 3])], "concat axis 0") { Tensor.concat($0, axis: 0) }
        check([randn([4, 3])], "indexSelect with repeats") { $0[0].indexSelect(axis: 0, [3, 0, 3, 1]) }
        check([randn([2, 4, 3])], "indexSelect axis 1") { $0[0].indexSelect(axis: 1, [2, 2, 0]) }
        check([randn([3, 4])], "gather axis 1") {
            $0[0].gather(axis: 1, index: [0, 3, 3, 1, 2, 0], indexShape: [3, 2])
        }
        check([randn([5, 3])], "embedding") { embedding($0[0], ids: [4, 0, 4, 2], idShape: [2, 2]) }
    }

    func testAttention() {
        check([randn([2, 3, 8])], "rope halfSplit") { $0[0].rope(positions: [0, 5, 17], layout: .halfSplit) }
        check([randn([2, 3, 8])], "rope interleaved, inverse") {
            $0[0].rope(positions: [3, 4, 9], base: 100, layout: .interleaved, inverse: true)
        }
        // 4 query heads share 2 KV heads; S = 5 keys for T = 3 queries (2 cached positions).
        check([randn([1, 4, 3, 4]), randn([1, 2, 5, 4]), randn([1, 2, 5, 3])], "causal GQA attention") {
            scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], causal: true)
        }
        check([randn([2, 3, 4]), randn([2, 4, 4]), randn([2, 4, 2])], "non-causal attention, rank 3") {
            scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], causal: false, scale: 0.7)
        }
    }

    func testConv2d() {
        check([randn([2, 2, 5, 5]), randn([3, 2, 3, 3], std: 0.5), randn([3])], "conv2d stride 2 padding 1") {
            conv2d($0[0], weight: $0[1], bias: $0[2], stride: 2, padding: 1)
        }
        check([randn([1, 3, 4, 6]), randn([2, 3, 2, 3], std: 0.5)], "conv2d no padding") {
            conv2d($0[0], weight: $0[1])
        }
    }

    func testLosses() {
        check([randn([3, 4]), randn([3, 4])], "mse") { mseLoss($0[0], $0[1]) }
        check([randn([4, 5])], "cross-entropy") { crossEntropyLoss(logits: $0[0], targets: [0, 4, 2, 2]) }
        check([randn([3, 5]), randn([3, 5])], "KL divergence") { klDivergenceLoss(logits: $0[0], target: $0[1]) }
        check([randn([3, 6]), randn([3, 6])], "cosine loss") { cosineLoss($0[0], $0[1]) }
    }

    /// The checker itself must catch a wrong backward, or the tests above prove nothing.
    func testGradCheckDetectsAWrongGradient() {
        let x = randn([4])
        let r = gradCheck([x]) { inputs in
            let t = inputs[0]
            let out = Tensor(uninitializedShape: t.shape)
            for i in 0..<t.count { out.data[i] = t.data[i] * t.data[i] }
            out.record([t]) { _, g in  // wrong on purpose: d(x²)/dx is 2x, not x
                t.accumulateGrad { gx, _ in for i in 0..<t.count { gx[i] = g[i] * t.data[i] } }
            }
            return out
        }
        XCTAssertFalse(r.passed, "a gradient off by a factor of 2 went unnoticed: \(r)")
    }
}
