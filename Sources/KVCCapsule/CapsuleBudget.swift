/// How a compression ratio becomes concrete sizes, and how bytes are counted.
///
/// The full cache stores K and V of the vision span in float16: `2 x N x d x 2` bytes per layer and KV head.
/// A ratio `r` removes that fraction of those bytes. Keys and values are the same size in the full cache, so a split
/// is one number: the keys' own ratio `rK`; the values then get `rV = 2r - rK`, which keeps the total at `r`.
/// Keys keep `round((1 - rK) N)` tokens; values get the largest PCA rank whose coefficients, basis and mean fit their budget.
public struct CapsuleBudget: Equatable, Codable, Sendable {
    public var ratio: Double
    public var keyRatio: Double

    public init(ratio: Double, keyRatio: Double) {
        self.ratio = ratio
        self.keyRatio = keyRatio
    }

    public var valueRatio: Double { 2 * ratio - keyRatio }

    /// The sizes for one span of `tokens` vectors of `headDim`.
    public func plan(tokens n: Int, headDim d: Int) -> SpanPlan {
        let keptKeys = min(n, max(1, Int((Double(n) * (1 - keyRatio)).rounded())))
        let valueBudget = (1 - valueRatio) * Double(n * d)   // in float16 elements
        // A budget that holds the raw float16 values keeps them exactly; otherwise factors cost (n + d) q + d halves.
        if valueBudget >= Double(n * d) {
            return SpanPlan(tokens: n, headDim: d, keptKeys: keptKeys, valueRank: nil)
        }
        let rank = Int(((valueBudget - Double(d)) / Double(n + d)).rounded(.down))
        return SpanPlan(tokens: n, headDim: d, keptKeys: keptKeys, valueRank: max(0, min(rank, min(n, d))))
    }
}

/// Concrete sizes for one vision span (per layer and KV head).
public struct SpanPlan: Equatable, Sendable {
    public var tokens: Int
    public var headDim: Int
    public var keptKeys: Int
    /// PCA rank of the values, or nil when the budget allows the raw float16 values (cheaper than full-rank factors).
    public var valueRank: Int?

    /// Float16 bytes of the full cache for this span, keys and values.
    public var fullBytes: Int { 2 * tokens * headDim * 2 }
    /// Retained keys (structured retention patterns are derived from the grid, so they cost no index bytes).
    public var keyBytes: Int { keptKeys * headDim * 2 }
    /// Coefficients, basis and mean of the value PCA, float16.
    public var valueBytes: Int {
        guard let q = valueRank else { return tokens * headDim * 2 }
        return (tokens * q + q * headDim + headDim) * 2
    }
    public var bytes: Int { keyBytes + valueBytes }
    public var measuredRatio: Double { 1 - Double(bytes) / Double(fullBytes) }
}
