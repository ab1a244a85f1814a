/// How many tokens an eviction baseline keeps at ratio `r`: its bytes (kept tokens' float16 keys and values plus its
/// index bytes) stay within `(1 - r)` of the full float16 span, the capsule's budget at the same ratio.
public enum EvictionBudget {
    /// Bytes of one token's keys and values in one layer (all KV heads, float16).
    public static func tokenBytes(kvHeads: Int, headDim: Int) -> Int { kvHeads * headDim * 2 * 2 }

    /// Bytes of a keep mask over `tokens` tokens (one bit each), what tells an arbitrary kept subset apart.
    public static func maskBytes(tokens: Int) -> Int { (tokens + 7) / 8 }

    /// Tokens kept per layer so that kept bytes + `indexBytes` come nearest to (1 - ratio) x the full span bytes (like the
    /// capsule's kept keys: within half a token of the budget, either way).
    public static func keptTokens(tokens n: Int, ratio: Double, kvHeads: Int, headDim: Int, indexBytes: Int) -> Int {
        let perToken = tokenBytes(kvHeads: kvHeads, headDim: headDim)
        let budget = (1 - ratio) * Double(n * perToken) - Double(indexBytes)
        return max(0, min(n, Int((budget / Double(perToken)).rounded())))
    }

    /// The `k` highest-scoring indices, ascending (ties go to the earlier token).
    public static func top(_ k: Int, of scores: [Float]) -> [Int] {
        let order = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        return order.prefix(k).sorted()
    }
}
