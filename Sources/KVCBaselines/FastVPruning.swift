/// FastV-style pruning: the first `fullLayers` layers keep every image token; from there on, every layer keeps only
/// the image tokens the last prefill query attended to most in layer `fullLayers - 1`. FastV drops the tokens from the
/// hidden states during prefill; as a cache it drops their keys and values from those layers on (the kept tokens'
/// entries were computed with all tokens present). Bytes, counted honestly: the full layers at float16, the pruned
/// layers' kept tokens, and one mask shared by them; the pruned layers keep fewer tokens to pay for the full ones.
public struct FastVPruning: SpanCompressor {
    public let ratio: Double
    public let fullLayers: Int
    public init(ratio: Double, fullLayers: Int = 2) {
        self.ratio = ratio
        self.fullLayers = fullLayers
    }
    public var name: String { "fastv" }
    /// The last query of the prefill.
    public var scoring: AttentionScoring? { .window(1) }

    /// Tokens each pruned layer keeps for a span of `n` tokens over `layerCount` layers.
    public func keptTokens(tokens n: Int, layerCount: Int, kvHeads: Int, headDim: Int) -> Int {
        let pruned = layerCount - fullLayers
        guard pruned > 0 else { return n }
        let perToken = EvictionBudget.tokenBytes(kvHeads: kvHeads, headDim: headDim)
        let budget = (1 - ratio) * Double(layerCount * n * perToken) - Double(fullLayers * n * perToken)
            - Double(EvictionBudget.maskBytes(tokens: n))
        return max(0, min(n, Int((budget / Double(pruned * perToken)).rounded())))
    }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        guard span.layer >= fullLayers else { return .keeping(Array(0..<span.tokens), of: span, indexBytes: 0) }
        let k = keptTokens(tokens: span.tokens, layerCount: span.layerCount, kvHeads: span.kvHeads, headDim: span.headDim)
        let mask = span.layer == fullLayers ? EvictionBudget.maskBytes(tokens: span.tokens) : 0   // stored once
        return .keeping(EvictionBudget.top(k, of: span.scores[fullLayers - 1]), of: span, indexBytes: mask)
    }
}
