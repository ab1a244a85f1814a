/// SnapKV-style selection: per layer, rank image tokens by the attention they get from an observation window of the
/// last prefill queries, smoothed by average pooling over neighbouring tokens (so kept tokens come with their
/// context), and keep the top ones. In this evaluation the window is the end of the image prefix (the prefix is
/// compressed once and shared by every question, like the capsule), not the question. One-bit mask per layer counted.
public struct SnapKVEviction: SpanCompressor {
    public let ratio: Double
    public let window: Int
    public let poolKernel: Int
    public init(ratio: Double, window: Int = 8, poolKernel: Int = 5) {
        self.ratio = ratio
        self.window = window
        self.poolKernel = poolKernel
    }
    public var name: String { "snapkv" }
    public var scoring: AttentionScoring? { .window(window) }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        let mask = EvictionBudget.maskBytes(tokens: span.tokens)
        let k = EvictionBudget.keptTokens(tokens: span.tokens, ratio: ratio, kvHeads: span.kvHeads, headDim: span.headDim,
                                          indexBytes: mask)
        return .keeping(EvictionBudget.top(k, of: Self.averagePool(span.scores[span.layer], kernel: poolKernel)),
                        of: span, indexBytes: mask)
    }

    /// Mean over the `kernel` tokens centred on each one (fewer at the ends).
    static func averagePool(_ x: [Float], kernel: Int) -> [Float] {
        let half = kernel / 2
        return x.indices.map { i in
            let window = max(0, i - half)...min(x.count - 1, i + half)
            return window.reduce(Float(0)) { $0 + x[$1] } / Float(window.count)
        }
    }
}
