import KVCBackbone
import KVCCore

/// The cache every baseline runs in. During prefill it is a plain float16 cache (and, for score-based methods,
/// scores the attention each entry receives); `compress(visionPositions:)` then hands each layer's image-token span
/// to the baseline's `SpanCompressor` and keeps what it returns. Text positions stay float16, as in the capsule.
///
/// Bytes: `visionBytes` counts the encoded form the compressor reports (int8 codes and scales, kept tokens and
/// their mask, PCA factors); `textBytes` the float16 text entries. The cache holds the decoded float16 span for
/// attention to read in place, so its `residentBytes` is larger: accuracy is measured here, memory and speed with
/// the fused paths.
public final class VisionSpanCache: QueryObservingCache {
    public let layerCount: Int
    public let kvHeadCount: Int
    public let headDim: Int
    public let compressor: SpanCompressor
    private let store: PositionedKVStore
    private let scorer: PrefillAttentionScores?
    private var length_ = 0
    private var visionTokens = 0
    private var keptVision: [Int] = []
    private var lastVisionPosition: Int?
    public private(set) var visionBytes = 0
    public private(set) var isCompressed = false

    public init(config: LlamaConfig, compressor: SpanCompressor) {
        layerCount = config.layerCount
        kvHeadCount = config.kvHeadCount
        headDim = config.headDim
        self.compressor = compressor
        store = PositionedKVStore(layerCount: config.layerCount, kvHeadCount: config.kvHeadCount, headDim: config.headDim)
        scorer = compressor.scoring.map {
            PrefillAttentionScores(scoring: $0, layerCount: config.layerCount, headCount: config.headCount, headDim: config.headDim)
        }
    }

    public var length: Int { length_ }

    public var queryObserver: LlamaModel.QueryObserver? {
        guard let scorer, !isCompressed else { return nil }
        return { layer, queries, count, first in scorer.observe(layer: layer, queries: queries, count: count, firstPosition: first) }
    }

    public func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        store.append(layer: layer, keys: keys, values: values, count: count, firstPosition: length_)
        if let scorer, !isCompressed {
            store.withLayer(layer) { scorer.score(layer: layer, view: $0, kvHeadCount: kvHeadCount) }
        }
        if layer == layerCount - 1 { length_ += count }
    }

    public func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        try store.withLayer(layer, body)
    }

    public func trim(to newLength: Int) {
        if isCompressed, let last = lastVisionPosition {
            precondition(newLength > last, "VisionSpanCache.trim: cannot trim into the compressed vision span")
        }
        store.trim(to: newLength)
        length_ = min(length_, newLength)
    }
    /// Compresses the image tokens at `visionPositions` (ascending) in every layer. Call once, after prefill.
    public func compress(visionPositions: [Int32]) throws {
        guard !isCompressed else { throw KVCError("\(compressor.name): the vision span is already compressed") }
        guard !visionPositions.isEmpty else { return }
        let n = visionPositions.count
        var bytes = 0, kept: [Int] = []
        for l in 0..<layerCount {
            let positions = store.positions(layer: l)
            var indices: [Int] = []
            indices.reserveCapacity(n)
            for p in visionPositions {
                let i = positions.partitioningIndex { $0 >= p }
                guard i < positions.count, positions[i] == p else {
                    throw KVCError("\(compressor.name): vision position \(p) is not in layer \(l) of the cache")
                }
                indices.append(i)
            }
            let (keys, values) = store.gather(layer: l, indices: indices)
            let scores = scorer.map { s in s.scores.map { row in indices.map { $0 < row.count ? row[$0] : 0 } } } ?? []
            let span = VisionSpan(layer: l, layerCount: layerCount, tokens: n, kvHeads: kvHeadCount, headDim: headDim,
                                  keys: keys, values: values, scores: scores)
            let out = try compressor.compress(span)
            guard out.kept.allSatisfy({ (0..<n).contains($0) }), out.keys.count == kvHeadCount * out.kept.count * headDim,
                  out.values.count == out.keys.count else {
                throw KVCError("\(compressor.name): layer \(l) returned a malformed span")
            }
            store.replace(layer: l, removed: indices, positions: out.kept.map { visionPositions[$0] }, keys: out.keys,
                          values: out.values)
            bytes += out.bytes
            kept.append(out.kept.count)
        }
        visionTokens = n
        keptVision = kept
        visionBytes = bytes
        lastVisionPosition = Int(visionPositions.last!)
        isCompressed = true
    }

    /// Float16 bytes the full cache holds for the same vision span.
    public var visionBytesFull: Int { visionTokens * layerCount * EvictionBudget.tokenBytes(kvHeads: kvHeadCount, headDim: headDim) }

    /// Vision tokens still attended to, per layer (after `compress`).
    public var keptTokensPerLayer: [Int] { keptVision }

    /// Float16 bytes of the text entries (everything but the compressed span).
    public var textBytes: Int {
        store.storedBytes - keptVision.reduce(0, +) * EvictionBudget.tokenBytes(kvHeads: kvHeadCount, headDim: headDim)
    }

    /// What the cache costs as a compressed cache: text in float16 plus the encoded vision span.
    public var storedBytes: Int { textBytes + visionBytes }

    public var residentBytes: Int { store.residentBytes }
}
