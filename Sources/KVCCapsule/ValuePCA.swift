import KVCCore

/// Values of one vision span (one layer, one KV head) in factored form: `V ≈ C·B + 1·μᵀ`, with coefficients
/// `C [N, q]`, basis `B [q, d]` and mean `μ [d]`. Built per sequence at prefill by a truncated SVD of the mean-centred
/// values. The mean is float16; the factors are float16, or int8 (coefficients with one scale per component = column,
/// basis with one scale per component = row), which at the same bytes almost doubles the rank:
/// `V ≈ C8 · diag(sC) · diag(sB) · B8 + μ`.
public struct FactoredValues: Equatable, Sendable {
    public let tokens: Int
    public let headDim: Int
    public let rank: Int
    public let coefficients: StoredMatrix
    public let basis: StoredMatrix
    public let mean: [UInt16]

    public var byteCount: Int { coefficients.byteCount + basis.byteCount + 2 * mean.count }

    /// Bytes of the factors of `[tokens, headDim]` values at `rank` and `precision` (the budget's formula).
    public static func bytes(tokens n: Int, headDim d: Int, rank q: Int, precision: StoragePrecision) -> Int {
        StoredMatrix.bytes(rows: n, cols: q, precision: precision) + StoredMatrix.bytes(rows: q, cols: d, precision: precision, scalePerRow: true)
            + 2 * d
    }

    /// Factors `values` (`[tokens, headDim]`, row-major) at `rank` (clamped to min(tokens, headDim)).
    public init(values: UnsafeBufferPointer<Float>, tokens n: Int, headDim d: Int, rank: Int,
                precision: StoragePrecision = .float16) throws {
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
            coefficients = StoredMatrix([], rows: 0, cols: 0, precision: precision)
            basis = StoredMatrix([], rows: 0, cols: 0, precision: precision, scalePerRow: true)
            return
        }
        var centred = [Float](repeating: 0, count: n * d)
        for i in 0..<n { for j in 0..<d { centred[i * d + j] = values[i * d + j] - muUsed[j] } }
        let (u, s, vt) = try LAPACK.svd(centred, rows: n, cols: d)
        let p = min(n, d)
        var c = [Float](repeating: 0, count: n * q)
        for i in 0..<n { for k in 0..<q { c[i * q + k] = u[i * p + k] * s[k] } }
        coefficients = StoredMatrix(c, rows: n, cols: q, precision: precision)
        basis = StoredMatrix(Array(vt[0..<(q * d)]), rows: q, cols: d, precision: precision, scalePerRow: true)
    }

    /// Dense reconstruction `C·B + μ` into `out` (`[tokens, headDim]`).
    public func reconstruct(into out: UnsafeMutablePointer<Float>) {
        let d = headDim
        let mu = HalfConversion.halfToFloat(mean)
        for i in 0..<tokens { for j in 0..<d { out[i * d + j] = mu[j] } }
        guard rank > 0 else { return }
        let c = coefficients.floats(), b = basis.floats()
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
