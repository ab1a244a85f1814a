/// Keeps every (1/(1-r))-th image token, evenly spaced over the span, in every layer; the rest leave attention.
/// The kept set follows from the span length and the ratio alone, so it costs no index bytes.
public struct StridedDropping: SpanCompressor {
    public let ratio: Double
    public init(ratio: Double) { self.ratio = ratio }
    public var name: String { "strided" }
    public var scoring: AttentionScoring? { nil }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        let n = span.tokens
        let k = EvictionBudget.keptTokens(tokens: n, ratio: ratio, kvHeads: span.kvHeads, headDim: span.headDim, indexBytes: 0)
        // Token j*n/k for j < k: evenly spread, distinct since k <= n.
        let kept = (0..<k).map { $0 * n / k }
        return .keeping(kept, of: span, indexBytes: 0)
    }
}
