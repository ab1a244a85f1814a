import Foundation

// Activations and the (log-)softmax family.

extension Tensor {
    public func relu() -> Tensor {
        let out = Tensor(uninitializedShape: shape)
        let n = count, px = data, po = out.data
        for i in 0..<n { po[i] = Swift.max(px[i], 0) }
        out.record([self]) { out, g in
            // The mask comes from the output (y > 0 ⇔ x > 0), so the input need not be read.
            let py = out.data
            self.accumulateGrad { gx, overwrite in
                if overwrite { for i in 0..<n { gx[i] = py[i] > 0 ? g[i] : 0 } }
                else { for i in 0..<n { gx[i] += py[i] > 0 ? g[i] : 0 } }
            }
        }
        return out
    }

    public func sigmoid() -> Tensor {
        unaryOp(self, { 1 / (1 + Foundation.exp(-$0)) }, derivative: { _, y in y * (1 - y) })
    }

    public func tanh() -> Tensor {
        unaryOp(self, { fastTanh($0) }, derivative: { _, y in 1 - y * y })
    }

    /// x * sigmoid(x) (the Llama MLP activation).
    public func silu() -> Tensor {
        unaryOp(self, { $0 / (1 + Foundation.exp(-$0)) }, derivative: { x, _ in
            let s = 1 / (1 + Foundation.exp(-x))
            return s * (1 + x * (1 - s))
        })
    }

    /// GELU, tanh approximation (as GPT-2 and PyTorch's `approximate="tanh"`):
    /// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
    public func gelu() -> Tensor {
        let c: Float = 0.7978845608  // √(2/π)
        return unaryOp(self, { x in 0.5 * x * (1 + fastTanh(c * (x + 0.044715 * x * x * x))) },
                       derivative: { x, _ in
            let t = fastTanh(c * (x + 0.044715 * x * x * x))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
        })
    }

    /// Softmax along `axis`, stable (the row maximum is subtracted before exponentiating).
    public func softmax(axis: Int = -1) -> Tensor { softmaxFamily(axis: axis, log: false) }

    /// log(softmax(x)) along `axis`, computed as x - max - log Σ exp(x - max) so it never overflows or takes log(0).
    public func logSoftmax(axis: Int = -1) -> Tensor { softmaxFamily(axis: axis, log: true) }

    private func softmaxFamily(axis: Int, log: Bool) -> Tensor {
        let ax = normalizedAxis(axis, op: log ? "logSoftmax" : "softmax")
        let (outer, n, inner) = splitAround(axis: ax)
        let out = Tensor(uninitializedShape: shape)
        let px = data, py = out.data
        if inner == 1 { return lastAxisSoftmax(out: out, rows: outer, n: n, log: log) }
        for o in 0..<outer {
            for i in 0..<inner {
                let base = o * n * inner + i
                var m = -Float.infinity
                for j in 0..<n { m = Swift.max(m, px[base + j * inner]) }
                var s: Float = 0
                for j in 0..<n {
                    let e = Foundation.exp(px[base + j * inner] - m)
                    py[base + j * inner] = e
                    s += e
                }
                if log {
                    let lse = m + Foundation.log(s)
                    for j in 0..<n { py[base + j * inner] = px[base + j * inner] - lse }
                } else {
                    let r = 1 / s
                    for j in 0..<n { py[base + j * inner] *= r }
                }
            }
        }
        out.record([self]) { out, g in
            let py = out.data
            let gx = self.gradBufferForScatter()
            for o in 0..<outer {
                for i in 0..<inner {
                    let base = o * n * inner + i
                    if log {
                        // y = x - lse: dx = g - softmax · Σg
                        var sg: Float = 0
                        for j in 0..<n { sg += g[base + j * inner] }
                        for j in 0..<n {
                            let k = base + j * inner
                            gx[k] += g[k] - Foundation.exp(py[k]) * sg
                        }
                    } else {
                        // dx = y ⊙ (g - Σ g·y)
                        var dot: Float = 0
                        for j in 0..<n { dot += g[base + j * inner] * py[base + j * inner] }
                        for j in 0..<n {
                            let k = base + j * inner
                            gx[k] += py[k] * (g[k] - dot)
                        }
                    }
                }
            }
        }
        return out
    }

    /// Softmax over contiguous rows (the last axis, by far the most common case): unit-stride loops.
    private func lastAxisSoftmax(out: Tensor, rows: Int, n: Int, log: Bool) -> Tensor {
        let px = data, py = out.data
        for r in 0..<rows {
            let x = px + r * n, y = py + r * n
            var m = -Float.infinity
            for j in 0..<n { m = Swift.max(m, x[j]) }
            var s: Float = 0
            for j in 0..<n { let e = Foundation.exp(x[j] - m); y[j] = e; s += e }
            if log {
                let lse = m + Foundation.log(s)
                for j in 0..<n { y[j] = x[j] - lse }
            } else {
                let inv = 1 / s
                for j in 0..<n { y[j] *= inv }
            }
        }
        out.record([self]) { out, g in
            let py = out.data
            self.accumulateGrad { gx, overwrite in
                for r in 0..<rows {
                    let y = py + r * n, gr = g + r * n, d = gx + r * n
                    if log {  // dx = g - softmax · Σg
                        var sg: Float = 0
                        for j in 0..<n { sg += gr[j] }
                        if overwrite { for j in 0..<n { d[j] = gr[j] - Foundation.exp(y[j]) * sg } }
                        else { for j in 0..<n { d[j] += gr[j] - Foundation.exp(y[j]) * sg } }
                    } else {  // dx = y ⊙ (g - Σ g·y)
                        var dot: Float = 0
                        for j in 0..<n { dot += gr[j] * y[j] }
                        if overwrite { for j in 0..<n { d[j] = y[j] * (gr[j] - dot) } }
                        else { for j in 0..<n { d[j] += y[j] * (gr[j] - dot) } }
                    }
                }
            }
        }
        return out
    }

    /// The shape viewed as [outer, shape[axis], inner] (row-major), the layout every single-axis op works on.
    func splitAround(axis: Int) -> (outer: Int, n: Int, inner: Int) {
        let outer = shape[..<axis].reduce(1, *)
        let inner = shape[(axis + 1)...].reduce(1, *)
        return (outer, shape[axis], inner)
    }
}

/// tanh from one exp: 1 - 2/(e^{2|x|} + 1), with the odd Taylor series below |x| = 0.1 where that form would cancel
/// (series error < 1e-8 relative there). About 1e-7 relative error overall and several times faster than the C
/// library's tanhf, which dominated GELU's cost.
@inline(__always)
func fastTanh(_ x: Float) -> Float {
    let a = Swift.abs(x)
    let t: Float
    if a < 0.1 {
        let a2 = a * a
        t = a * (1 - a2 * (1.0 / 3 - a2 * (2.0 / 15)))
    } else {
        t = 1 - 2 / (Foundation.exp(2 * Swift.min(a, 10)) + 1)
    }
    return x < 0 ? -t : t
}
