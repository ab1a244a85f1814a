import KVCCore

/// Keeps a uniformly random subset of the image tokens (the same in every layer), drawn from `seed` and the span
/// length, so it is reproducible from the seed and costs no index bytes.
public struct RandomDropping: SpanCompressor {
    public let ratio: Double
    public let seed: UInt64
    public init(ratio: Double, seed: UInt64) {
        self.ratio = ratio
        self.seed = seed
    }
    public var name: String { "random" }
    public var scoring: AttentionScoring? { nil }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        let n = span.tokens
        let k = EvictionBudget.keptTokens(tokens: n, ratio: ratio, kvHeads: span.kvHeads, headDim: span.headDim, indexBytes: 0)
        var rng = SeededRandom(seed: seed &+ UInt64(n))
        var order = Array(0..<n)
        rng.shuffle(&order)
        return .keeping(order.prefix(k).sorted(), of: span, indexBytes: 0)
    }
}
