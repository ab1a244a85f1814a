import Foundation

// Losses. Each returns a scalar tensor (shape []) averaged as documented.

/// mean((prediction - target)²) over all elements. One fused op: the backward is a single pass 2(p - t)/n.
public func mseLoss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
    shapeCheck(prediction.shape == target.shape, "mseLoss",
               "prediction \(prediction.shape) and target \(target.shape) differ")
    let n = prediction.count
    let pp = prediction.data, pt = target.data
    var sum: Double = 0  // a float accumulator loses digits over millions of terms
    var i = 0
    while i < n {
        // Blocks of float partial sums vectorise; the blocks are combined in double.
        var partial: Float = 0
        let end = Swift.min(i + 4096, n)
        for j in i..<end { let e = pp[j] - pt[j]; partial += e * e }
        sum += Double(partial)
        i = end
    }
    let out = Tensor(scalar: Float(sum / Double(Swift.max(n, 1))))
    out.record([prediction, target]) { _, g in
        let c = 2 * g[0] / Float(Swift.max(n, 1))
        let pp = prediction.data, pt = target.data
        if prediction.requiresGrad {
            prediction.accumulateGrad { gp, overwrite in
                if overwrite { for j in 0..<n { gp[j] = c * (pp[j] - pt[j]) } }
                else { for j in 0..<n { gp[j] += c * (pp[j] - pt[j]) } }
            }
        }
        if target.requiresGrad {
            target.accumulateGrad { gt, overwrite in
                if overwrite { for j in 0..<n { gt[j] = -c * (pp[j] - pt[j]) } }
                else { for j in 0..<n { gt[j] -= c * (pp[j] - pt[j]) } }
            }
        }
    }
    return out
}

/// Cross-entropy of logits [N, C] against integer class targets (N of them, each in 0..<C), averaged over N.
/// Fused log-softmax: the gradient is (softmax - onehot) / N.
public func crossEntropyLoss(logits: Tensor, targets: [Int]) -> Tensor {
    shapeCheck(logits.rank == 2 && logits.shape[0] == targets.count, "crossEntropyLoss",
               "logits must be [N, C] with N = \(targets.count) targets, got \(logits.shape)")
    let (rows, classes) = (logits.shape[0], logits.shape[1])
    for t in targets {
        shapeCheck(t >= 0 && t < classes, "crossEntropyLoss", "target \(t) out of range 0..<\(classes)")
    }
    var probs = [Float](repeating: 0, count: logits.count)
    var total: Double = 0
    let px = logits.data
    for r in 0..<rows {
        let row = px + r * classes
        var m = -Float.infinity
        for j in 0..<classes { m = Swift.max(m, row[j]) }
        var s: Float = 0
        for j in 0..<classes { let e = Foundation.exp(row[j] - m); probs[r * classes + j] = e; s += e }
        for j in 0..<classes { probs[r * classes + j] /= s }
        total += Double(m + Foundation.log(s) - row[targets[r]])
    }
    let out = Tensor(scalar: Float(total / Double(Swift.max(rows, 1))))
    out.record([logits]) { _, g in
        let c = g[0] / Float(Swift.max(rows, 1))
        logits.accumulateGrad { gx, overwrite in
            for r in 0..<rows {
                for j in 0..<classes {
                    let v = c * (probs[r * classes + j] - (j == targets[r] ? 1 : 0))
                    gx[r * classes + j] = overwrite ? v : gx[r * classes + j] + v
                }
            }
        }
    }
    return out
}

/// KL(softmax(target) ‖ softmax(logits)) along the last axis, averaged over the other axes (rows).
/// Gradients flow into both arguments (detach `target` for distillation against a fixed teacher).
public func klDivergenceLoss(logits: Tensor, target: Tensor) -> Tensor {
    shapeCheck(logits.shape == target.shape, "klDivergenceLoss", "logits \(logits.shape) and target \(target.shape) differ")
    let rows = logits.count / Swift.max(logits.shape.last ?? 1, 1)
    let logP = target.logSoftmax(axis: -1)
    let logQ = logits.logSoftmax(axis: -1)
    return (logP.exp() * (logP - logQ)).sum() * (1 / Float(Swift.max(rows, 1)))
}

/// Cosine similarity along `axis`: a·b / (max(‖a‖, eps) · max(‖b‖, eps)), shape of the inputs without `axis`.
public func cosineSimilarity(_ a: Tensor, _ b: Tensor, axis: Int = -1, eps: Float = 1e-8) -> Tensor {
    shapeCheck(a.shape == b.shape, "cosineSimilarity", "shapes \(a.shape) and \(b.shape) differ")
    let dot = (a * b).sum(axis: axis)
    let na = a.square().sum(axis: axis).clampedNorm(eps)
    let nb = b.square().sum(axis: axis).clampedNorm(eps)
    return dot / (na * nb)
}

/// mean(1 - cosine similarity) along the last axis.
public func cosineLoss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
    (1 - cosineSimilarity(prediction, target)).mean()
}

extension Tensor {
    /// √x with the result clamped below at eps (the gradient is zero where clamped).
    fileprivate func clampedNorm(_ eps: Float) -> Tensor {
        unaryOp(self, { Swift.max($0.squareRoot(), eps) }, derivative: { _, y in y > eps ? 0.5 / y : 0 })
    }
}
