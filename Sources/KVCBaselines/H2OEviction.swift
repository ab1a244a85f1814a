/// H2O-style heavy hitters: per layer, keep the image tokens with the most attention accumulated over every prefill
/// query (all heads summed; one kept set per layer, since attention reads all KV heads through one position list).
/// The kept set is arbitrary, so a one-bit-per-token mask per layer is counted.
public struct H2OEviction: SpanCompressor {
    public let ratio: Double
    public init(ratio: Double) { self.ratio = ratio }
    public var name: String { "h2o" }
    public var scoring: AttentionScoring? { .accumulated }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        let mask = EvictionBudget.maskBytes(tokens: span.tokens)
        let k = EvictionBudget.keptTokens(tokens: span.tokens, ratio: ratio, kvHeads: span.kvHeads, headDim: span.headDim,
                                          indexBytes: mask)
        return .keeping(EvictionBudget.top(k, of: span.scores[span.layer]), of: span, indexBytes: mask)
    }
}
