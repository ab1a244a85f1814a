import KVCBackbone
import KVCCollect
import KVCCore

/// How a layer rebuilds the keys it dropped (recipe `reconstructor.kind`, globally or per layer).
public enum KeyReconstructorKind: String, Codable, Sendable, CaseIterable {
    /// The RoPE-equivariant linear map.
    case linear
    /// Copy of the nearest retained neighbour, re-rotated.
    case nearest
    /// The linear map plus the trained MLP residual (dense mode).
    case mlp
}

/// Everything a recipe can choose per layer (DESIGN §2: "per layer, from the recipe"): the budget (ratio, K/V split,
/// storage precisions, hence the PCA rank and the kept keys), the retention policy and the key reconstructor.
/// Layers are the same size, so the capsule's overall ratio is the mean of its layers' ratios.
public struct CapsuleLayerSettings: Equatable, Sendable {
    public var budget: CapsuleBudget
    public var policy: RetentionPolicy
    public var reconstructor: KeyReconstructorKind

    public init(budget: CapsuleBudget, policy: RetentionPolicy = .strided, reconstructor: KeyReconstructorKind = .linear) {
        self.budget = budget
        self.policy = policy
        self.reconstructor = reconstructor
    }

    /// Sizes of one span of this layer (a scored policy's mask bytes come out of the keys' share).
    public func plan(tokens: Int, headDim: Int) -> SpanPlan {
        budget.plan(tokens: tokens, headDim: headDim, maskBytes: policy.maskBytes(tokens: tokens))
    }

    /// The retained set and neighbourhoods of one layer and KV head of a collected sample. A scored policy ranks the
    /// tokens by the attention of the sample's text queries (`RetentionScores`), all rows but the last: the last is the
    /// answer's first token, which inference does not have when it compresses.
    public func neighbourhood(_ s: CacheSample, layer l: Int, head h: Int, layout: CacheLayout, neighbours: Int) -> GridNeighbours {
        let n = s.visionCount, d = layout.headDim
        let kept = plan(tokens: n, headDim: d).keptKeys
        var scores: [Float]?
        if policy == .scored {
            let t = s.textCount, rows = max(1, t - 1), group = layout.queryHeads / layout.kvHeads
            let base = ((l * layout.kvHeads + h) * n) * d
            let keys = HalfConversion.halfToFloat(Array(s.keys[base..<(base + n * d)]))
            var queries = [Float]()
            for g in 0..<group {
                let qb = ((l * layout.queryHeads + h * group + g) * t) * d
                queries += HalfConversion.halfToFloat(Array(s.queries[qb..<(qb + rows * d)]))
            }
            scores = queries.withUnsafeBufferPointer { q in
                keys.withUnsafeBufferPointer { k in
                    RetentionScores.pooled(rows: rows, group: group, query: { i, g in q.baseAddress! + (g * rows + i) * d },
                                           keys: k.baseAddress!, tokens: n, headDim: d)
                }
            }
        }
        return GridNeighbours(grids: s.grids, keep: policy.mask(grids: s.grids, kept: kept, scores: scores), count: neighbours)
    }
}
