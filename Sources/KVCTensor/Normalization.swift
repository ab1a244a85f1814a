import Foundation

// Layer norm and RMS norm over the last axis, each a single fused op (statistics kept for the backward).

extension Tensor {
    /// (x - mean) / √(var + eps) · weight + bias over the last axis (biased variance, as PyTorch).
    public func layerNorm(weight: Tensor? = nil, bias: Tensor? = nil, eps: Float = 1e-5) -> Tensor {
        let d = shape.last ?? 1
        if let weight { shapeCheck(weight.shape == [d], "layerNorm", "weight \(weight.shape) should be [\(d)] for input \(shape)") }
        if let bias { shapeCheck(bias.shape == [d], "layerNorm", "bias \(bias.shape) should be [\(d)] for input \(shape)") }
        let rows = count / Swift.max(d, 1)
        // Absent weight/bias become constant rows so the loops have no optional per element.
        let weightRow = weight ?? Tensor.filled([d], with: 1), biasRow = bias ?? Tensor.filled([d], with: 0)
        let (w, bb) = (weightRow.data, biasRow.data)
        let out = Tensor(uninitializedShape: shape)
        var xhat = [Float](repeating: 0, count: count)
        var rstd = [Float](repeating: 0, count: rows)
        let px = data, po = out.data
        for r in 0..<rows {
            let row = px + r * d
            var mean: Float = 0
            for j in 0..<d { mean += row[j] }
            mean /= Float(d)
            var v: Float = 0
            for j in 0..<d { v += (row[j] - mean) * (row[j] - mean) }
            let s = 1 / (v / Float(d) + eps).squareRoot()
            rstd[r] = s
            for j in 0..<d {
                let h = (row[j] - mean) * s
                xhat[r * d + j] = h
                po[r * d + j] = h * w[j] + bb[j]
            }
        }
        let parents = [self] + [weight, bias].compactMap { $0 }
        out.record(parents) { _, g in
            let w = weightRow.data  // captures the row, keeping it alive with the closure
            if self.requiresGrad {
                let gx = self.gradBufferForScatter()
                var dh = [Float](repeating: 0, count: d)
                for r in 0..<rows {
                    var mdh: Float = 0, mdhh: Float = 0
                    for j in 0..<d {
                        dh[j] = g[r * d + j] * w[j]
                        mdh += dh[j]
                        mdhh += dh[j] * xhat[r * d + j]
                    }
                    mdh /= Float(d); mdhh /= Float(d)
                    for j in 0..<d { gx[r * d + j] += rstd[r] * (dh[j] - mdh - xhat[r * d + j] * mdhh) }
                }
            }
            if let weight, weight.requiresGrad {
                let gw = weight.gradBufferForScatter()
                for r in 0..<rows { for j in 0..<d { gw[j] += g[r * d + j] * xhat[r * d + j] } }
            }
            if let bias, bias.requiresGrad {
                let gb = bias.gradBufferForScatter()
                for r in 0..<rows { add(g + r * d, into: gb, count: d) }
            }
        }
        return out
    }

    /// x / √(mean(x²) + eps) · weight over the last axis (Llama's RMSNorm).
    public func rmsNorm(weight: Tensor? = nil, eps: Float = 1e-5) -> Tensor {
        let d = shape.last ?? 1
        if let weight { shapeCheck(weight.shape == [d], "rmsNorm", "weight \(weight.shape) should be [\(d)] for input \(shape)") }
        let rows = count / Swift.max(d, 1)
        let weightRow = weight ?? Tensor.filled([d], with: 1)  // no optional per element in the loops
        let w = weightRow.data
        let out = Tensor(uninitializedShape: shape)
        var rinv = [Float](repeating: 0, count: rows)
        let px = data, po = out.data
        for r in 0..<rows {
            let row = px + r * d
            var ss: Float = 0
            for j in 0..<d { ss += row[j] * row[j] }
            let s = 1 / (ss / Float(d) + eps).squareRoot()
            rinv[r] = s
            for j in 0..<d { po[r * d + j] = row[j] * s * w[j] }
        }
        let parents = [self] + [weight].compactMap { $0 }
        out.record(parents) { _, g in
            let px = self.data, w = weightRow.data  // captures the row, keeping it alive with the closure
            if self.requiresGrad {
                let gx = self.gradBufferForScatter()
                for r in 0..<rows {
                    let s = rinv[r]
                    var dot: Float = 0
                    for j in 0..<d { dot += g[r * d + j] * w[j] * px[r * d + j] }
                    let c = s * s * s * dot / Float(d)
                    for j in 0..<d { gx[r * d + j] += s * g[r * d + j] * w[j] - c * px[r * d + j] }
                }
            }
            if let weight, weight.requiresGrad {
                let gw = weight.gradBufferForScatter()
                for r in 0..<rows { for j in 0..<d { gw[j] += g[r * d + j] * px[r * d + j] * rinv[r] } }
            }
        }
        return out
    }
}

