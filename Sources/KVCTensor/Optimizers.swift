import Foundation

// Optimizers, gradient clipping and the learning-rate schedule. Updates run in place over raw buffers, one pass
// per parameter, and record nothing on the tape. Parameters without a current gradient are skipped.

public protocol Optimizer: AnyObject {
    var parameters: [Tensor] { get }
    var learningRate: Float { get set }
    func step()
}

extension Optimizer {
    /// Marks every parameter's gradient stale (no memory is touched; see `Tensor.zeroGrad`).
    public func zeroGrad() { for p in parameters { p.zeroGrad() } }
}

/// SGD with (heavy-ball) momentum and optional L2 weight decay, as PyTorch's `SGD`:
/// v = momentum·v + (g + wd·p); p -= lr·v.
public final class SGD: Optimizer {
    public let parameters: [Tensor]
    public var learningRate: Float
    public let momentum: Float
    public let weightDecay: Float
    private var velocity: [TensorStorage?]

    public init(parameters: [Tensor], learningRate: Float, momentum: Float = 0, weightDecay: Float = 0) {
        self.parameters = parameters
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        velocity = Array(repeating: nil, count: parameters.count)
    }

    public func step() {
        let (lr, mu, wd) = (learningRate, momentum, weightDecay)
        for (k, p) in parameters.enumerated() {
            guard let g = p.gradPointer else { continue }
            let w = p.data, n = p.count
            if mu == 0 {
                for i in 0..<n { w[i] -= lr * (g[i] + wd * w[i]) }
                continue
            }
            if velocity[k] == nil {  // first step: v = g (PyTorch's convention, no dampening of the first gradient)
                let v = TensorStorage(count: n)
                for i in 0..<n { v.pointer[i] = g[i] + wd * w[i] }
                velocity[k] = v
            } else {
                let v = velocity[k]!.pointer
                for i in 0..<n { v[i] = mu * v[i] + g[i] + wd * w[i] }
            }
            let v = velocity[k]!.pointer
            for i in 0..<n { w[i] -= lr * v[i] }
        }
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter), matching PyTorch's `AdamW` update:
/// p ← p·(1 - lr·wd); m ← β1·m + (1-β1)·g; v ← β2·v + (1-β2)·g²; p ← p - lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + eps).
/// All four lines run in one pass over each parameter.
public final class AdamW: Optimizer {
    public let parameters: [Tensor]
    public var learningRate: Float
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public internal(set) var stepCount = 0
    /// First and second moments, one buffer per parameter (internal: `TrainingCheckpoint` saves and restores them).
    var m: [TensorStorage], v: [TensorStorage]

    public init(parameters: [Tensor], learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0.01) {
        self.parameters = parameters
        self.learningRate = learningRate
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        m = parameters.map { p in let s = TensorStorage(count: p.count); s.pointer.initialize(repeating: 0, count: p.count); return s }
        v = parameters.map { p in let s = TensorStorage(count: p.count); s.pointer.initialize(repeating: 0, count: p.count); return s }
    }

    public func step() {
        stepCount += 1
        let t = Double(stepCount)
        let bc1 = 1 - Foundation.pow(Double(beta1), t), bc2 = 1 - Foundation.pow(Double(beta2), t)
        let stepSize = Float(Double(learningRate) / bc1)
        let invSqrtBC2 = Float(1 / bc2.squareRoot())
        let decay = 1 - learningRate * weightDecay
        let c = AdamWConstants(beta1: beta1, beta2: beta2, eps: eps, decay: decay, stepSize: stepSize,
                               invSqrtBC2: invSqrtBC2)
        for (k, p) in parameters.enumerated() {
            guard let g = p.gradPointer else { continue }
            let w = p.data, mk = m[k].pointer, vk = v[k].pointer, n = p.count
            // Large tensors are split across cores: the update is bound by memory bandwidth, which one core
            // does not saturate.
            let chunks = n >= 1 << 17 ? 2 * ProcessInfo.processInfo.activeProcessorCount : 1
            if chunks == 1 {
                adamWUpdate(w, g, mk, vk, 0..<n, c)
            } else {
                // Chunk bounds on multiples of 8, so every element takes the same (SIMD) path whatever the core count.
                let per = ((n + chunks - 1) / chunks + 7) & ~7
                DispatchQueue.concurrentPerform(iterations: chunks) { j in
                    adamWUpdate(w, g, mk, vk, Swift.min(j * per, n)..<Swift.min((j + 1) * per, n), c)
                }
            }
        }
    }
}

private struct AdamWConstants {
    let beta1, beta2, eps, decay, stepSize, invSqrtBC2: Float
}

/// The whole AdamW update of `range` in one pass, eight lanes at a time (explicit SIMD: with four pointers that
/// might alias, the compiler will not vectorise the scalar loop by itself).
private func adamWUpdate(_ w: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                         _ v: UnsafeMutablePointer<Float>, _ range: Range<Int>, _ c: AdamWConstants) {
    typealias V8 = SIMD8<Float>
    @inline(__always) func load(_ p: UnsafePointer<Float>, _ i: Int) -> V8 {
        UnsafeRawPointer(p + i).loadUnaligned(as: V8.self)
    }
    @inline(__always) func store(_ x: V8, _ p: UnsafeMutablePointer<Float>, _ i: Int) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: x, as: V8.self)
    }
    var i = range.lowerBound
    while i + 8 <= range.upperBound {
        let gi = load(g, i)
        let mi = c.beta1 * load(m, i) + (1 - c.beta1) * gi
        let vi = c.beta2 * load(v, i) + (1 - c.beta2) * gi * gi
        store(mi, m, i)
        store(vi, v, i)
        store(load(w, i) * c.decay - c.stepSize * mi / (vi.squareRoot() * c.invSqrtBC2 + c.eps), w, i)
        i += 8
    }
    while i < range.upperBound {
        let mi = c.beta1 * m[i] + (1 - c.beta1) * g[i]
        let vi = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i]
        m[i] = mi
        v[i] = vi
        w[i] = w[i] * c.decay - c.stepSize * mi / (vi.squareRoot() * c.invSqrtBC2 + c.eps)
        i += 1
    }
}

/// Scales all gradients together so their global L2 norm is at most `maxNorm`; returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ parameters: [Tensor], maxNorm: Float) -> Float {
    var total: Double = 0
    for p in parameters {
        guard let g = p.gradPointer else { continue }
        var s: Float = 0
        for i in 0..<p.count { s += g[i] * g[i] }
        total += Double(s)
    }
    let norm = Float(total.squareRoot())
    if norm > maxNorm && norm > 0 {
        let c = maxNorm / (norm + 1e-6)
        for p in parameters {
            guard let g = p.gradPointer else { continue }
            for i in 0..<p.count { g[i] *= c }
        }
    }
    return norm
}

/// Linear warmup from 0 to `baseLR` over `warmupSteps`, then cosine decay to `minLR` at `totalSteps` (held after).
public struct WarmupCosineSchedule: Sendable {
    public let baseLR: Float, minLR: Float
    public let warmupSteps: Int, totalSteps: Int

    public init(baseLR: Float, warmupSteps: Int, totalSteps: Int, minLR: Float = 0) {
        self.baseLR = baseLR; self.minLR = minLR
        self.warmupSteps = max(warmupSteps, 0); self.totalSteps = max(totalSteps, 1)
    }

    /// Learning rate for 0-based `step`.
    public func learningRate(at step: Int) -> Float {
        if step < warmupSteps { return baseLR * Float(step + 1) / Float(warmupSteps) }
        let span = max(totalSteps - warmupSteps, 1)
        let progress = min(Double(step - warmupSteps) / Double(span), 1)
        return minLR + (baseLR - minLR) * Float(0.5 * (1 + Foundation.cos(Double.pi * progress)))
    }
}
