// Sum, mean and max over one axis, several axes or everything.

extension Tensor {
    /// Sum of all elements, as a scalar tensor of shape [].
    public func sum() -> Tensor { reshaped([count]).sum(axis: 0) }

    /// Mean of all elements, as a scalar tensor.
    public func mean() -> Tensor { sum() * (1 / Float(Swift.max(count, 1))) }

    public func sum(axis: Int, keepDims: Bool = false) -> Tensor {
        reduce(axis: axis, keepDims: keepDims, scale: 1, op: "sum")
    }

    public func mean(axis: Int, keepDims: Bool = false) -> Tensor {
        let ax = normalizedAxis(axis, op: "mean")
        return reduce(axis: ax, keepDims: keepDims, scale: 1 / Float(Swift.max(shape[ax], 1)), op: "mean")
    }

    /// Sum over several axes (any order; duplicates are an error).
    public func sum(axes: [Int], keepDims: Bool = false) -> Tensor {
        let sorted = axes.map { normalizedAxis($0, op: "sum") }.sorted(by: >)
        shapeCheck(Set(sorted).count == sorted.count, "sum", "duplicate axes \(axes) for shape \(shape)")
        var t = self
        for ax in sorted { t = t.sum(axis: ax, keepDims: keepDims) }  // highest first keeps lower indices valid
        return t
    }

    public func mean(axes: [Int], keepDims: Bool = false) -> Tensor {
        let n = axes.map { shape[normalizedAxis($0, op: "mean")] }.reduce(1, *)
        return sum(axes: axes, keepDims: keepDims) * (1 / Float(Swift.max(n, 1)))
    }

    /// Maximum along `axis`. The gradient flows to the first maximal element of each slice.
    public func max(axis: Int, keepDims: Bool = false) -> Tensor {
        let ax = normalizedAxis(axis, op: "max")
        let (outer, n, inner) = splitAround(axis: ax)
        shapeCheck(n > 0, "max", "cannot take the maximum over an empty axis \(axis) of shape \(shape)")
        let out = Tensor(uninitializedShape: reducedShape(ax, keepDims: keepDims))
        var argmax = [Int](repeating: 0, count: outer * inner)
        let px = data, po = out.data
        for o in 0..<outer {
            for i in 0..<inner {
                var best = px[o * n * inner + i], bestJ = 0
                for j in 1..<n where px[(o * n + j) * inner + i] > best {
                    best = px[(o * n + j) * inner + i]
                    bestJ = j
                }
                po[o * inner + i] = best
                argmax[o * inner + i] = (o * n + bestJ) * inner + i
            }
        }
        out.record([self]) { _, g in
            let gx = self.gradBufferForScatter()
            for k in 0..<argmax.count { gx[argmax[k]] += g[k] }
        }
        return out
    }

    private func reducedShape(_ ax: Int, keepDims: Bool) -> [Int] {
        var s = shape
        if keepDims { s[ax] = 1 } else { s.remove(at: ax) }
        return s
    }

    private func reduce(axis: Int, keepDims: Bool, scale: Float, op: String) -> Tensor {
        let ax = normalizedAxis(axis, op: op)
        let (outer, n, inner) = splitAround(axis: ax)
        let out = Tensor(uninitializedShape: reducedShape(ax, keepDims: keepDims))
        let px = data, po = out.data
        for o in 0..<outer {
            let dst = po + o * inner
            dst.initialize(repeating: 0, count: inner)
            for j in 0..<n {
                let src = px + (o * n + j) * inner
                for i in 0..<inner { dst[i] += src[i] }
            }
            if scale != 1 { for i in 0..<inner { dst[i] *= scale } }
        }
        out.record([self]) { _, g in
            // Broadcast the gradient back along the reduced axis.
            self.accumulateGrad { gx, overwrite in
                for o in 0..<outer {
                    let src = g + o * inner
                    for j in 0..<n {
                        let dst = gx + (o * n + j) * inner
                        if overwrite { for i in 0..<inner { dst[i] = scale * src[i] } }
                        else { for i in 0..<inner { dst[i] += scale * src[i] } }
                    }
                }
            }
        }
        return out
    }
}
