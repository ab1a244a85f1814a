import KVCCapsule

/// PCA of keys and values alike (the capsule's value factorisation applied to both, no retention, no learned map):
/// per layer and KV head, keys and values are each stored as rank-q factors `C·B + μ` in float16, with q the largest
/// rank whose two factor sets come nearest to the budget: `2 ((n + d) q + d) ~ (1 - r) 2 n d` halves.
public struct KeyValuePCA: SpanCompressor {
    public let ratio: Double
    public init(ratio: Double) { self.ratio = ratio }
    public var name: String { "pca" }
    public var scoring: AttentionScoring? { nil }

    public func rank(tokens n: Int, headDim d: Int) -> Int {
        let budget = (1 - ratio) * Double(n * d) - Double(d)   // halves per factor set
        return max(0, min(min(n, d), Int((budget / Double(n + d)).rounded())))
    }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        let n = span.tokens, d = span.headDim, q = rank(tokens: n, headDim: d)
        var keys = [Float](repeating: 0, count: span.keys.count), values = keys, bytes = 0
        for h in 0..<span.kvHeads {
            let range = (h * n * d)..<((h + 1) * n * d)
            for (source, isKeys) in [(span.keys, true), (span.values, false)] {
                let factors = try Array(source[range]).withUnsafeBufferPointer {
                    try FactoredValues(values: $0, tokens: n, headDim: d, rank: q)
                }
                bytes += factors.byteCount
                let rebuilt = factors.reconstruct()
                if isKeys { keys.replaceSubrange(range, with: rebuilt) } else { values.replaceSubrange(range, with: rebuilt) }
            }
        }
        return CompressedSpan(kept: Array(0..<n), keys: keys, values: values, bytes: bytes)
    }
}
