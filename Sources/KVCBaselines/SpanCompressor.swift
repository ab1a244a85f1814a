/// One layer's image-token span as a baseline compresses it after prefill.
public struct VisionSpan {
    public let layer: Int
    public let layerCount: Int
    /// Tokens in the span (all images of the prompt).
    public let tokens: Int
    public let kvHeads: Int
    public let headDim: Int
    /// Float32 head-major `[kvHeads][tokens][headDim]`, keys after RoPE.
    public let keys: [Float]
    public let values: [Float]
    /// Attention each span token received during prefill, per layer (`scores[layer][token]`), for the score-based
    /// methods; empty when the method asked for none.
    public let scores: [[Float]]

    public init(layer: Int, layerCount: Int, tokens: Int, kvHeads: Int, headDim: Int, keys: [Float], values: [Float],
                scores: [[Float]] = []) {
        precondition(keys.count == kvHeads * tokens * headDim && values.count == keys.count, "VisionSpan: shape")
        self.layer = layer
        self.layerCount = layerCount
        self.tokens = tokens
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.keys = keys
        self.values = values
        self.scores = scores
    }

    /// Float16 bytes of the span in the full cache (keys and values).
    public var fullBytes: Int { kvHeads * tokens * headDim * 2 * 2 }
}

/// What a baseline keeps of one layer's span: the tokens still attended to, their keys and values as attention will
/// read them (dequantized, rebuilt), and the bytes of the encoded form with every overhead (scales, masks, factors).
public struct CompressedSpan {
    /// Ascending indices into the span.
    public var kept: [Int]
    /// Float32 head-major `[kvHeads][kept][headDim]`.
    public var keys: [Float]
    public var values: [Float]
    public var bytes: Int

    public init(kept: [Int], keys: [Float], values: [Float], bytes: Int) {
        self.kept = kept
        self.keys = keys
        self.values = values
        self.bytes = bytes
    }

    /// Keeps the span tokens at `kept` exactly (float16, as the full cache stores them), plus `indexBytes` for
    /// whatever tells which tokens they are.
    public static func keeping(_ kept: [Int], of span: VisionSpan, indexBytes: Int) -> CompressedSpan {
        let d = span.headDim, n = span.tokens, k = kept.count
        var keys = [Float](repeating: 0, count: span.kvHeads * k * d), values = keys
        for h in 0..<span.kvHeads {
            for (j, i) in kept.enumerated() {
                for e in 0..<d {
                    keys[(h * k + j) * d + e] = span.keys[(h * n + i) * d + e]
                    values[(h * k + j) * d + e] = span.values[(h * n + i) * d + e]
                }
            }
        }
        return CompressedSpan(kept: kept, keys: keys, values: values, bytes: span.kvHeads * k * d * 2 * 2 + indexBytes)
    }
}

/// Which prefill queries a score-based method ranks tokens with.
public enum AttentionScoring: Equatable, Sendable {
    /// Every query of the prefill (H2O: accumulated attention received).
    case accumulated
    /// The last `n` queries of the prefill (SnapKV's observation window).
    case window(Int)
}

/// A baseline: how one layer's vision span is compressed after prefill. Text positions are never touched.
public protocol SpanCompressor {
    /// Name in results (`int8`, `h2o`, ...).
    var name: String { get }
    /// Fraction of the float16 vision-span bytes removed, as the method is configured.
    var ratio: Double { get }
    /// Prefill queries to score tokens with, or nil for methods that need no scores.
    var scoring: AttentionScoring? { get }
    func compress(_ span: VisionSpan) throws -> CompressedSpan
}
