/// How a compression ratio becomes concrete sizes, and how bytes are counted.
///
/// The full cache stores K and V of the vision span in float16: `2 x N x d x 2` bytes per layer and KV head.
/// A ratio `r` removes that fraction of those bytes. Keys and values are the same size in the full cache, so a split
/// is one number: the keys' own ratio `rK`; the values then get `rV = 2r - rK`, which keeps the total at `r`.
/// Keys keep `round((1 - rK) N)` float16 tokens, or as many int8 tokens as fit the same bytes with their per-channel
/// scales; values get the largest PCA rank whose coefficients, basis and mean (and int8 scales) fit their budget.
public struct CapsuleBudget: Equatable, Codable, Sendable {
    public var ratio: Double
    public var keyRatio: Double
    public var keyPrecision: StoragePrecision
    public var valuePrecision: StoragePrecision

    public init(ratio: Double, keyRatio: Double, keyPrecision: StoragePrecision = .float16,
                valuePrecision: StoragePrecision = .float16) {
        self.ratio = ratio
        self.keyRatio = keyRatio
        self.keyPrecision = keyPrecision
        self.valuePrecision = valuePrecision
    }

    public var valueRatio: Double { 2 * ratio - keyRatio }

    /// The sizes for one span of `tokens` vectors of `headDim`. `maskBytes` (a score-based policy's keep mask) come out
    /// of the keys' share, so the span's total stays within the ratio.
    public func plan(tokens n: Int, headDim d: Int, maskBytes: Int = 0) -> SpanPlan {
        let total = (1 - ratio) * Double(4 * n * d)   // bytes the whole span (keys and values) may keep
        func keys(bytes: Double) -> Int {
            let k: Int
            switch keyPrecision {
            case .float16: k = Int((bytes / Double(2 * d)).rounded())
            case .int8: k = Int(((bytes - Double(2 * d)) / Double(d)).rounded(.down))   // d bytes per key + 2d of scales
            }
            return min(n, max(1, k))
        }
        let keyBudget = (1 - keyRatio) * Double(2 * n * d) - Double(maskBytes)
        var kept = keys(bytes: keyBudget)
        func plan(_ rank: Int?) -> SpanPlan {
            SpanPlan(tokens: n, headDim: d, keptKeys: kept, valueRank: rank, keyPrecision: keyPrecision, valuePrecision: valuePrecision,
                     maskBytes: maskBytes)
        }
        // Bytes the keys cannot use (every key already kept, as int8 can at moderate ratios) go to the values.
        let keysUse = kept == n ? min(keyBudget, Double(StoredMatrix.bytes(rows: n, cols: d, precision: keyPrecision))) : keyBudget
        let valueBudget = total - Double(maskBytes) - keysUse
        // A budget that holds the raw float16 values keeps them exactly; otherwise the factors' bytes decide the rank.
        if valueBudget >= Double(2 * n * d) { return plan(nil) }
        let perRank = valuePrecision == .float16 ? 2 * (n + d) : n + d + 4   // int8: two float16 scales per component
        let rank = max(0, min(Int(((valueBudget - Double(2 * d)) / Double(perRank)).rounded(.down)), min(n, d)))
        // And bytes that full-rank factors cannot use go back to the keys.
        if rank == min(n, d) {
            kept = max(kept, keys(bytes: total - Double(maskBytes)
                                  - Double(FactoredValues.bytes(tokens: n, headDim: d, rank: rank, precision: valuePrecision))))
        }
        return plan(rank)
    }
}

/// Concrete sizes for one vision span (per layer and KV head).
public struct SpanPlan: Equatable, Sendable {
    public var tokens: Int
    public var headDim: Int
    public var keptKeys: Int
    /// PCA rank of the values, or nil when the budget allows the raw float16 values (cheaper than full-rank factors).
    public var valueRank: Int?
    public var keyPrecision: StoragePrecision = .float16
    public var valuePrecision: StoragePrecision = .float16
    /// The keep mask of a score-based retention policy (structured patterns are derived from the grid: 0).
    public var maskBytes: Int = 0

    /// Float16 bytes of the full cache for this span, keys and values.
    public var fullBytes: Int { 2 * tokens * headDim * 2 }
    /// Retained keys and their int8 scales (structured retention patterns are derived from the grid, so they cost no
    /// index bytes).
    public var keyBytes: Int { StoredMatrix.bytes(rows: keptKeys, cols: headDim, precision: keyPrecision) }
    /// Coefficients, basis (with their int8 scales) and float16 mean of the value PCA, or the raw float16 values.
    public var valueBytes: Int {
        guard let q = valueRank else { return tokens * headDim * 2 }
        return FactoredValues.bytes(tokens: tokens, headDim: headDim, rank: q, precision: valuePrecision)
    }
    public var bytes: Int { keyBytes + valueBytes + maskBytes }
    public var measuredRatio: Double { 1 - Double(bytes) / Double(fullBytes) }
}
