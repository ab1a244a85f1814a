import KVCCore

/// Values of one vision span (one layer, one KV head) in factored form: `V ≈ C·B + 1·μᵀ`, with coefficients
/// `C [N, q]`, basis `B [q, d]` and mean `μ [d]`, all stored as float16. Built per sequence at prefill by a truncated SVD
/// of the mean-centred values.
public struct FactoredValues: Equatable, Sendable {
    public let tokens: Int
    public let headDim: Int
    public let rank: Int
    public let coefficients: [UInt16]
    public let basis: [UInt16]
    public let mean: [UInt16]

    public var byteCount: Int { 2 * (coefficients.count + basis.count + mean.count) }

    /// Factors `values` (`[tokens, headDim]`, row-major) at `rank` (clamped to min(tokens, headDim)).
    public init(values: UnsafeBufferPointer<Float>, tokens n: Int, headDim d: Int, rank: Int) throws {
        precondition(values.count == n * d, "FactoredValues: \(values.count) values for [\(n), \(d)]")
        let q = max(0, min(rank, min(n, d)))
        tokens = n
        headDim = d
        self.rank = q
        var mu = [Float](repeating: 0, count: d)
        for i in 0..<n { for j in 0..<d { mu[j] += values[i * d + j] } }
        for j in 0..<d { mu[j] /= Float(max(n, 1)) }
        // The mean is rounded to float16 first so the factors fit the residual the reader will actually add back.
        let muStored = HalfConversion.floatToHalf(mu)
        let muUsed = HalfConversion.halfToFloat(muStored)
        mean = muStored
        guard q > 0 else {
            coefficients = []
            basis = []
            return
        }
        var centred = [Float](repeating: 0, count: n * d)
        for i in 0..<n { for j in 0..<d { centred[i * d + j] = values[i * d + j] - muUsed[j] } }
        let (u, s, vt) = try LAPACK.svd(centred, rows: n, cols: d)
        let p = min(n, d)
        var c = [Float](repeating: 0, count: n * q)
        for i in 0..<n { for k in 0..<q { c[i * q + k] = u[i * p + k] * s[k] } }
        coefficients = HalfConversion.floatToHalf(c)
        basis = HalfConversion.floatToHalf(Array(vt[0..<(q * d)]))
    }

    /// Dense reconstruction `C·B + μ` into `out` (`[tokens, headDim]`).
    public func reconstruct(into out: UnsafeMutablePointer<Float>) {
        let d = headDim
        let mu = HalfConversion.halfToFloat(mean)
        for i in 0..<tokens { for j in 0..<d { out[i * d + j] = mu[j] } }
        guard rank > 0 else { return }
        let c = HalfConversion.halfToFloat(coefficients), b = HalfConversion.halfToFloat(basis)
        c.withUnsafeBufferPointer { cp in
            b.withUnsafeBufferPointer { bp in
                BLAS.gemm(m: tokens, n: d, k: rank, a: cp.baseAddress!, b: bp.baseAddress!, beta: 1, c: out)
            }
        }
    }

    public func reconstruct() -> [Float] {
        var out = [Float](repeating: 0, count: tokens * headDim)
        out.withUnsafeMutableBufferPointer { reconstruct(into: $0.baseAddress!) }
        return out
    }

    /// Fraction of the centred values' energy (squared Frobenius norm) that the rank-q factors keep.
    public static func energyKept(values: [Float], tokens n: Int, headDim d: Int, rank q: Int) throws -> Double {
        var mu = [Float](repeating: 0, count: d)
        for i in 0..<n { for j in 0..<d { mu[j] += values[i * d + j] / Float(n) } }
        var centred = values
        for i in 0..<n { for j in 0..<d { centred[i * d + j] -= mu[j] } }
        let s = try LAPACK.svd(centred, rows: n, cols: d).s
        let total = s.reduce(0.0) { $0 + Double($1 * $1) }
        let kept = s.prefix(q).reduce(0.0) { $0 + Double($1 * $1) }
        return total > 0 ? kept / total : 1
    }
}
