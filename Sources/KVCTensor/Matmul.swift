import KVCCore

// Matrix products through BLAS. The backward of C = op(A)·op(B) is two more GEMMs that read A, B and the gradient
// in place with transpose flags; nothing is transposed in memory, and the result lands in the gradient buffer
// directly (beta 0 on a stale buffer, beta 1 to accumulate).

/// op(A)·op(B) for matrices [m, k]·[k, n]; with leading batch axes, one product per batch entry.
/// - `a`: [..., m, k] (or [..., k, m] when `transposeA`), `b`: [..., k, n] (or [..., n, k] when `transposeB`).
/// - Batch axes of `a` and `b` must be equal, or `b` may be a plain matrix shared by every batch entry.
public func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
    shapeCheck(a.rank >= 2 && b.rank >= 2, "matmul", "needs matrices, got \(a.shape) and \(b.shape)")
    let (ar, ac) = (a.shape[a.rank - 2], a.shape[a.rank - 1])
    let (br, bc) = (b.shape[b.rank - 2], b.shape[b.rank - 1])
    let (m, k) = transposeA ? (ac, ar) : (ar, ac)
    let (kb, n) = transposeB ? (bc, br) : (br, bc)
    let batchA = Array(a.shape.dropLast(2)), batchB = Array(b.shape.dropLast(2))
    shapeCheck(k == kb, "matmul", "inner dimensions differ: \(a.shape)\(transposeA ? "ᵀ" : "") · "
               + "\(b.shape)\(transposeB ? "ᵀ" : "") (\(k) vs \(kb))")
    shapeCheck(batchB.isEmpty || batchA == batchB, "matmul",
               "batch axes differ: \(a.shape) · \(b.shape) (b must have a's batch axes or none)")
    let batch = batchA.reduce(1, *)

    // A shared right matrix and an untransposed left one fold the batch into the rows: one large GEMM.
    if batch > 1 && batchB.isEmpty && !transposeA {
        let folded = matmul(a.reshaped([batch * m, k]), b, transposeB: transposeB)
        return folded.reshaped(batchA + [m, n])
    }

    let out = Tensor(uninitializedShape: batchA + [m, n])
    let strideA = m * k, strideB = batchB.isEmpty ? 0 : k * n, strideC = m * n
    for i in 0..<batch {
        BLAS.gemm(transA: transposeA, transB: transposeB, m: m, n: n, k: k,
                  a: a.data + i * strideA, b: b.data + i * strideB, c: out.data + i * strideC)
    }
    out.record([a, b]) { _, g in
        if a.requiresGrad {
            a.accumulateGrad { ga, overwrite in
                for i in 0..<batch {
                    let bi = b.data + i * strideB, gi = g + i * strideC, beta: Float = overwrite ? 0 : 1
                    if transposeA {  // A is [k, m]: dA = op(B) · Gᵀ
                        BLAS.gemm(transA: transposeB, transB: true, m: k, n: m, k: n, a: bi, b: gi,
                                  beta: beta, c: ga + i * strideA)
                    } else {         // A is [m, k]: dA = G · op(B)ᵀ
                        BLAS.gemm(transA: false, transB: !transposeB, m: m, n: k, k: n, a: gi, b: bi,
                                  beta: beta, c: ga + i * strideA)
                    }
                }
            }
        }
        if b.requiresGrad {
            b.accumulateGrad { gb, overwrite in
                for i in 0..<batch {
                    let ai = a.data + i * strideA, gi = g + i * strideC
                    // A shared right matrix sums the contributions of every batch entry.
                    let beta: Float = overwrite && (i == 0 || strideB != 0) ? 0 : 1
                    if transposeB {  // B is [n, k]: dB = Gᵀ · op(A)
                        BLAS.gemm(transA: true, transB: transposeA, m: n, n: k, k: m, a: gi, b: ai,
                                  beta: beta, c: gb + i * strideB)
                    } else {         // B is [k, n]: dB = op(A)ᵀ · G
                        BLAS.gemm(transA: !transposeA, transB: false, m: k, n: n, k: m, a: ai, b: gi,
                                  beta: beta, c: gb + i * strideB)
                    }
                }
            }
        }
    }
    return out
}

/// activation(x·Wᵀ + b) for x [..., in], weight [out, in] (PyTorch's layout, so checkpoints interoperate), bias [out].
/// Fused: the bias is written first and the GEMM accumulates onto it; the backward is two GEMMs and a column sum.
/// ReLU is fused too (applied in place; its mask, the bias column sum and the masking of the incoming gradient
/// share one pass), which saves one activation-sized buffer and two passes over it per layer. Other activations are
/// applied as separate ops.
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, activation: Activation = .identity) -> Tensor {
    switch activation {
    case .identity: return fusedLinear(x, weight: weight, bias: bias, relu: false)
    case .relu: return fusedLinear(x, weight: weight, bias: bias, relu: true)
    default: return activation.apply(fusedLinear(x, weight: weight, bias: bias, relu: false))
    }
}

private func fusedLinear(_ x: Tensor, weight: Tensor, bias: Tensor?, relu: Bool) -> Tensor {
    shapeCheck(x.rank >= 1 && weight.rank == 2 && x.shape[x.rank - 1] == weight.shape[1], "linear",
               "input \(x.shape) does not match weight [out, in] = \(weight.shape)")
    let (outF, inF) = (weight.shape[0], weight.shape[1])
    if let bias { shapeCheck(bias.shape == [outF], "linear", "bias \(bias.shape) should be [\(outF)]") }
    let rows = x.count / Swift.max(inF, 1)
    let out = Tensor(uninitializedShape: Array(x.shape.dropLast()) + [outF])
    if let bias {
        for r in 0..<rows { (out.data + r * outF).update(from: bias.data, count: outF) }
    }
    BLAS.gemm(transA: false, transB: true, m: rows, n: outF, k: inF, a: x.data, b: weight.data,
              beta: bias == nil ? 0 : 1, c: out.data)
    if relu {
        let po = out.data
        for i in 0..<out.count { po[i] = Swift.max(po[i], 0) }
    }
    var parents = [x, weight]
    if let bias { parents.append(bias) }
    out.record(parents) { out, gIn in
        var g = gIn
        if relu {
            // The gradient through ReLU, masked in place: the incoming buffer belongs to `out`, whose gradient is
            // discarded once this closure returns. The bias column sum rides along in the same pass.
            let gm = UnsafeMutablePointer(mutating: gIn), py = out.data
            let biasGrad = bias.flatMap { $0.requiresGrad ? $0 : nil }
            if let biasGrad {
                biasGrad.accumulateGrad { gb, overwrite in
                    if overwrite { gb.initialize(repeating: 0, count: outF) }
                    for r in 0..<rows {
                        let gr = gm + r * outF, yr = py + r * outF
                        for j in 0..<outF {
                            let v = yr[j] > 0 ? gr[j] : 0
                            gr[j] = v
                            gb[j] += v
                        }
                    }
                }
            } else {
                for i in 0..<out.count { gm[i] = py[i] > 0 ? gm[i] : 0 }
            }
            g = UnsafePointer(gm)
        } else if let bias, bias.requiresGrad {  // db = column sums of G
            bias.accumulateGrad { gb, overwrite in
                if overwrite { gb.initialize(repeating: 0, count: outF) }
                for r in 0..<rows { add(g + r * outF, into: gb, count: outF) }
            }
        }
        if x.requiresGrad {   // dx = G · W
            x.accumulateGrad { gx, overwrite in
                BLAS.gemm(m: rows, n: inF, k: outF, a: g, b: weight.data, beta: overwrite ? 0 : 1, c: gx)
            }
        }
        if weight.requiresGrad {  // dW = Gᵀ · x
            weight.accumulateGrad { gw, overwrite in
                BLAS.gemm(transA: true, m: outF, n: inF, k: rows, a: g, b: x.data, beta: overwrite ? 0 : 1, c: gw)
            }
        }
    }
    return out
}
