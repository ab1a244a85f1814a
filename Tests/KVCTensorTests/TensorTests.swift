import Foundation
import KVCCore
import XCTest
@testable import KVCTensor

/// Forward values against independent naive implementations, tape behaviour, and numerics edge cases.
final class TensorTests: XCTestCase {
    private var rng = SeededRandom(seed: 99)
    private func randn(_ shape: [Int]) -> Tensor { Tensor.randn(shape, rng: &rng) }

    private func assertClose(_ a: [Float], _ b: [Float], tol: Float = 1e-4, _ label: String = "",
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, label, file: file, line: line)
        for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > tol * (1 + abs(b[i])) {
            XCTFail("\(label): element \(i): \(a[i]) vs \(b[i])", file: file, line: line)
            return
        }
    }

    func testMatmulMatchesNaiveLoops() {
        let a = randn([2, 3, 5]), b = randn([2, 5, 4])
        let c = matmul(a, b)
        XCTAssertEqual(c.shape, [2, 3, 4])
        var expected = [Float]()
        for bt in 0..<2 { for i in 0..<3 { for j in 0..<4 {
            var s: Float = 0
            for k in 0..<5 { s += a.data[bt * 15 + i * 5 + k] * b.data[bt * 20 + k * 4 + j] }
            expected.append(s)
        } } }
        assertClose(c.scalars, expected, "batched matmul")
        // Transpose flags equal materialised transposes.
        assertClose(matmul(a.transposed(), b.transposed(), transposeA: true, transposeB: true).scalars, expected, "flags")
    }

    func testBroadcastAddMatchesManual() {
        let a = randn([2, 3]), b = randn([3])
        let c = a + b
        let expected = (0..<6).map { a.data[$0] + b.data[$0 % 3] }
        assertClose(c.scalars, expected, "row broadcast")
        let col = randn([2, 1])
        assertClose((a * col).scalars, (0..<6).map { a.data[$0] * col.data[$0 / 3] }, "column broadcast")
    }

    func testSoftmaxIsStableForHugeLogits() {
        let x = Tensor(shape: [2, 3], values: [1000, 1001, 1002, -1000, -1000, -1000])
        let p = x.softmax().scalars
        let e = [exp(-2.0), exp(-1.0), 1.0].map { Float($0 / (exp(-2.0) + exp(-1.0) + 1)) }
        assertClose(p, e + [1.0 / 3, 1.0 / 3, 1.0 / 3], "softmax")
        let lp = x.logSoftmax().scalars
        XCTAssertTrue(lp.allSatisfy { $0.isFinite }, "log-softmax overflowed: \(lp)")
        assertClose(lp, e.map { log($0) } + [Float](repeating: -log(3), count: 3), "log-softmax")
    }

    func testReductionsAndMax() {
        let x = Tensor(shape: [2, 3], values: [1, 5, 2, 7, -1, 3])
        XCTAssertEqual(x.sum(axis: 0).scalars, [8, 4, 5])
        XCTAssertEqual(x.sum(axis: 1, keepDims: true).shape, [2, 1])
        XCTAssertEqual(x.mean(axis: 1).scalars, [8.0 / 3, 3])
        XCTAssertEqual(x.max(axis: 1).scalars, [5, 7])
        XCTAssertEqual(x.sum().item, 17)
    }

    /// The positional property RoPE exists for: ⟨rope(q, m), rope(k, n)⟩ depends only on m - n.
    func testRopeDotProductDependsOnlyOnRelativePosition() {
        for layout in [RoPELayout.halfSplit, .interleaved] {
            let q = randn([1, 16]), k = randn([1, 16])
            func score(_ m: Int, _ n: Int) -> Float {
                let a = q.rope(positions: [m], layout: layout), b = k.rope(positions: [n], layout: layout)
                return (a * b).sum().item
            }
            XCTAssertEqual(score(7, 3), score(104, 100), accuracy: 1e-3, "\(layout)")
            XCTAssertNotEqual(score(7, 3), score(3, 7), "\(layout): angle sign lost")
            assertClose(q.rope(positions: [0], layout: layout).scalars, q.scalars, "\(layout) at position 0")
            let back = q.rope(positions: [42], layout: layout).rope(positions: [42], layout: layout, inverse: true)
            assertClose(back.scalars, q.scalars, "\(layout) inverse")
        }
    }

    /// The two layouts are the same rotation up to the permutation llama.cpp's converter applies to Q/K rows:
    /// half-split dimension i ↔ interleaved 2i, i + d/2 ↔ 2i + 1.
    func testRopeLayoutsDifferByTheGGUFPermutation() {
        let d = 8, x = randn([3, d])
        let toInterleaved = (0..<d).map { j in j % 2 == 0 ? j / 2 : j / 2 + d / 2 }  // new[j] = old[perm[j]]
        let xi = x.indexSelect(axis: 1, toInterleaved)
        let viaHalf = x.rope(positions: [1, 2, 30], layout: .halfSplit).indexSelect(axis: 1, toInterleaved)
        let viaInterleaved = xi.rope(positions: [1, 2, 30], layout: .interleaved)
        assertClose(viaInterleaved.scalars, viaHalf.scalars, "layouts")
        XCTAssertNotEqual(x.rope(positions: [1, 2, 30], layout: .halfSplit).scalars,
                          x.rope(positions: [1, 2, 30], layout: .interleaved).scalars)
    }

    func testAttentionMatchesNaivePerHeadLoop() {
        let (hq, hkv, t, s, d) = (4, 2, 3, 5, 4)
        let q = randn([1, hq, t, d]), k = randn([1, hkv, s, d]), v = randn([1, hkv, s, d])
        let out = scaledDotProductAttention(query: q, key: k, value: v, causal: true)
        var expected = [Float]()
        for h in 0..<hq {
            let kvh = h / (hq / hkv)
            for i in 0..<t {
                let visible = i + s - t
                var w = [Double](repeating: 0, count: s)
                for j in 0...visible {
                    var dot: Double = 0
                    for c in 0..<d { dot += Double(q.data[(h * t + i) * d + c]) * Double(k.data[(kvh * s + j) * d + c]) }
                    w[j] = exp(dot / sqrt(Double(d)))
                }
                let z = w.reduce(0, +)
                for c in 0..<d {
                    var acc: Double = 0
                    for j in 0..<s { acc += w[j] / z * Double(v.data[(kvh * s + j) * d + c]) }
                    expected.append(Float(acc))
                }
            }
        }
        assertClose(out.scalars, expected, tol: 1e-4, "attention")
    }

    func testConv2dMatchesDirectConvolution() {
        let x = randn([2, 3, 6, 5]), w = randn([4, 3, 3, 2]), b = randn([4])
        let (stride, pad) = (2, 1)
        let y = conv2d(x, weight: w, bias: b, stride: stride, padding: pad)
        let ho = (6 + 2 - 3) / 2 + 1, wo = (5 + 2 - 2) / 2 + 1
        XCTAssertEqual(y.shape, [2, 4, ho, wo])
        var expected = [Float]()
        for n in 0..<2 { for o in 0..<4 { for oy in 0..<ho { for ox in 0..<wo {
            var s = b.data[o]
            for c in 0..<3 { for ky in 0..<3 { for kx in 0..<2 {
                let iy = oy * stride + ky - pad, ix = ox * stride + kx - pad
                if iy >= 0 && iy < 6 && ix >= 0 && ix < 5 {
                    s += x.data[((n * 3 + c) * 6 + iy) * 5 + ix] * w.data[((o * 3 + c) * 3 + ky) * 2 + kx]
                }
            } } }
            expected.append(s)
        } } } }
        assertClose(y.scalars, expected, "conv2d")
    }

    func testLossValues() {
        let logits = Tensor(shape: [2, 3], values: [1, 2, 3, 0, 0, 0])
        let ce = crossEntropyLoss(logits: logits, targets: [2, 0]).item
        let expected = (-log(exp(3.0) / (exp(1.0) + exp(2.0) + exp(3.0))) + log(3.0)) / 2
        XCTAssertEqual(Double(ce), expected, accuracy: 1e-5)
        XCTAssertEqual(mseLoss(Tensor(shape: [2], values: [1, 2]), Tensor(shape: [2], values: [0, 4])).item, 2.5)
        XCTAssertEqual(klDivergenceLoss(logits: logits, target: logits).item, 0, accuracy: 1e-6)
        let a = Tensor(shape: [1, 2], values: [1, 0]), b = Tensor(shape: [1, 2], values: [0, 3])
        XCTAssertEqual(cosineLoss(a, b).item, 1, accuracy: 1e-6)
        XCTAssertEqual(cosineLoss(a, a * 5).item, 0, accuracy: 1e-6)
    }

    func testNoGradRecordsNothing() {
        let w = randn([3, 3])
        w.requiresGrad = true
        let y = Tensor.withNoGrad { (matmul(w, w).relu() + w).sum() }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertFalse(y.hasTapeNode)
        XCTAssertTrue(GradMode.isEnabled, "no-grad mode leaked out of its scope")
        let z = (w * w).sum()
        XCTAssertTrue(z.hasTapeNode)
    }

    func testGradientsAccumulateUntilZeroed() {
        let w = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        (w * w).sum().backward()
        (w * w).sum().backward()
        XCTAssertEqual(w.grad?.scalars, [4, 8], "two backward passes must add")
        w.zeroGrad()
        XCTAssertNil(w.grad)
        (w * 3).sum().backward()
        XCTAssertEqual(w.grad?.scalars, [3, 3], "after zeroGrad the next gradient overwrites")
    }

    func testFrozenInputGetsNoGradient() {
        let x = randn([4, 3]), w = randn([2, 3])
        w.requiresGrad = true
        linear(x, weight: w).sum().backward()
        XCTAssertNil(x.grad)
        XCTAssertNotNil(w.grad)
    }

    /// The fused linear+ReLU must agree with the unfused ops, values and gradients (bias included).
    func testFusedLinearReluMatchesSeparateOps() {
        let x = randn([6, 5]), w = randn([4, 5]), b = randn([4])
        for t in [x, w, b] { t.requiresGrad = true }
        let seed = randn([6, 4])
        let fused = linear(x, weight: w, bias: b, activation: .relu)
        fused.backward(gradient: seed)
        let fusedGrads = [x, w, b].map { $0.grad!.scalars }
        for t in [x, w, b] { t.zeroGrad() }
        let separate = linear(x, weight: w, bias: b).relu()
        separate.backward(gradient: seed)
        XCTAssertEqual(fused.scalars, separate.scalars)
        for (k, t) in [x, w, b].enumerated() { assertClose(fusedGrads[k], t.grad!.scalars, tol: 1e-6, "gradient \(k)") }
    }

    func testReshapeIsAView() {
        let x = randn([2, 6])
        let v = x.reshaped([3, 4])
        XCTAssertTrue(v.storage === x.storage)
        x.data[5] = 42
        XCTAssertEqual(v.data[5], 42)
    }
}
