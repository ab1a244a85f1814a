import KVCCore

// Finite-difference gradient checking, reusable by every module's tests.

public struct GradCheckResult: CustomStringConvertible {
    /// Largest |analytic - numeric| / (atol + rtol·|numeric|) over all checked entries; ≤ 1 passes.
    public let worstRatio: Double
    public let worstInput: Int, worstIndex: Int
    public let analytic: Double, numeric: Double
    public var passed: Bool { worstRatio <= 1 }
    public var description: String {
        "worst at input \(worstInput)[\(worstIndex)]: analytic \(analytic), numeric \(numeric) (ratio to tolerance \(worstRatio))"
    }
}

/// Compares the tape's gradient of L = Σ wᵢ·f(inputs)ᵢ (fixed random weights w, so every output entry matters and
/// symmetric cancellations cannot hide an error) with central differences (L(x+h) - L(x-h)) / 2h.
///
/// The function is evaluated in float32, so the numeric derivative carries two errors: truncation O(h²·f''') and
/// rounding ≈ ε_float·|L| / h. L is accumulated in double from the float outputs; with h = 1e-2 and inputs of order 1
/// both errors are around 1e-4..1e-3 relative, hence the default tolerance |Δ| ≤ 2e-3 + 2e-2·|numeric|.
/// Inputs must be away from kinks (relu at 0, ties in max).
public func gradCheck(_ inputs: [Tensor], step h: Float = 1e-2, atol: Double = 2e-3, rtol: Double = 2e-2,
                      seed: UInt64 = 7, maxEntriesPerInput: Int = 64,
                      _ f: ([Tensor]) -> Tensor) -> GradCheckResult {
    for x in inputs { x.requiresGrad = true; x.zeroGrad() }
    let probe = f(inputs)
    var rng = SeededRandom(seed: seed)
    let weights = Tensor.uniform(probe.shape, low: -1, high: 1, rng: &rng)
    probe.backward(gradient: weights)
    let analytic = inputs.map { x in x.grad?.scalars ?? [Float](repeating: 0, count: x.count) }

    func weightedOutput() -> Double {
        let y = Tensor.withNoGrad { f(inputs) }
        var s: Double = 0
        for i in 0..<y.count { s += Double(y.data[i]) * Double(weights.data[i]) }
        return s
    }

    var worst = GradCheckResult(worstRatio: 0, worstInput: -1, worstIndex: -1, analytic: 0, numeric: 0)
    for (k, x) in inputs.enumerated() {
        // Check every entry of small inputs, an evenly spread subset of large ones.
        let stride = max(1, x.count / maxEntriesPerInput)
        for i in Swift.stride(from: 0, to: x.count, by: stride) {
            let saved = x.data[i]
            x.data[i] = saved + h
            let plus = weightedOutput()
            x.data[i] = saved - h
            let minus = weightedOutput()
            x.data[i] = saved
            let numeric = (plus - minus) / (2 * Double(h))
            let a = Double(analytic[k][i])
            let ratio = abs(a - numeric) / (atol + rtol * abs(numeric))
            if ratio > worst.worstRatio || worst.worstInput < 0 {
                worst = GradCheckResult(worstRatio: ratio, worstInput: k, worstIndex: i, analytic: a, numeric: numeric)
            }
        }
    }
    return worst
}
