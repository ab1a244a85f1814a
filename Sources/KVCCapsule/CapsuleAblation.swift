import Foundation
import KVCBackbone
import KVCCollect
import KVCCore

/// Offline ablations of a capsule on held-out collected caches: what each part of the method buys, measured on the
/// attention the prompt's text queries actually pay to the image (no model run needed, seconds per variant).
///
/// For every held-out sample, layer and KV head, the text queries of that head's query group attend over the vision
/// span; each variant rebuilds the span its own way, and we report the relative error of the attention output
/// `softmax(qKᵀ/√d)·V` against the full cache's and the KL of the attention weights. Variants at the adapter's byte
/// budget: keys evicted with their tokens / copied from the nearest retained neighbour / linear / linear + MLP, values
/// by PCA or by token dropping at the same value bytes; plus two isolation rows (exact keys, exact values) that show
/// which side the error comes from. A K/V split sweep refits the linear map for each key ratio at the same r.
public struct CapsuleAblation {
    public struct Variant: Codable, Sendable {
        public var name: String
        public var keys: String
        public var values: String
        /// Bytes of one 64-token span (per layer and KV head) this variant keeps; nil for isolation rows.
        public var bytesPerSpan: Int?
        public var outputError: Double
        /// nil when dropped tokens leave the attention (eviction): KL against the full cache is then unbounded.
        public var attentionKL: Double?
        public var perLayerOutputError: [Double]
        enum CodingKeys: String, CodingKey {
            case name, keys, values, bytesPerSpan = "bytes_per_span", outputError = "output_rel_error"
            case attentionKL = "attention_kl", perLayerOutputError = "per_layer_output_rel_error"
        }
    }

    public struct SplitPoint: Codable, Sendable {
        public var keyRatio: Double
        public var keptKeys: Int
        public var valueRank: Int?
        public var measuredRatio: Double
        public var outputError: Double
        public var attentionKL: Double
        public var keyError: Double
        public var valueError: Double
        enum CodingKeys: String, CodingKey {
            case keyRatio = "key_ratio", keptKeys = "kept_keys_64", valueRank = "value_rank_64", measuredRatio = "measured_ratio"
            case outputError = "output_rel_error", attentionKL = "attention_kl", keyError = "key_rel_error"
            case valueError = "value_rel_error"
        }
    }

    enum KeyMode { case exact, evict, nearest, linear, mlp }
    enum ValueMode { case exact, pca, dropped }

    public var settings: CapsuleSettings
    public var ropeBase: Double
    public var validationEvery: Int
    public var samples: Int

    public init(settings: CapsuleSettings, ropeBase: Double, validationEvery: Int = 5, samples: Int = 30) {
        self.settings = settings
        self.ropeBase = ropeBase
        self.validationEvery = validationEvery
        self.samples = samples
    }

    /// Held-out samples (every `validationEvery`-th, as the training runs hold them out), at most `samples`.
    public func heldOut(_ store: CacheStore) throws -> [CacheSample] {
        var out: [CacheSample] = [], index = 0
        try store.forEachSample { s in
            defer { index += 1 }
            if index % validationEvery == 0 && out.count < samples { out.append(s) }
        }
        return out
    }

    /// The variants at the adapter's budget.
    public func variants(on held: [CacheSample], layout: CacheLayout) throws -> [Variant] {
        let linear: LinearKeyReconstructor?
        if case .linear(let m) = settings.keys { linear = m } else { linear = nil }
        var rows: [(String, KeyMode, ValueMode, Bool)] = [
            ("tokens evicted at the same bytes (no reconstruction)", .evict, .exact, true),
            ("keys nearest copy + values PCA", .nearest, .pca, true),
        ]
        if linear != nil {
            rows.append(("keys linear + values PCA", .linear, .pca, true))
            rows.append(("keys linear + values dropped", .linear, .dropped, true))
            if settings.keyResidual != nil { rows.append(("keys linear+MLP + values PCA", .mlp, .pca, true)) }
            rows.append(("keys linear, values exact (isolates keys)", .linear, .exact, false))
            if settings.keyResidual != nil { rows.append(("keys linear+MLP, values exact (isolates keys)", .mlp, .exact, false)) }
        }
        rows.append(("keys exact, values PCA (isolates values)", .exact, .pca, false))
        let plan = settings.budget.plan(tokens: 64, headDim: layout.headDim)
        return try rows.map { name, k, v, equalBytes in
            let m = try measure(held, layout: layout, keys: k, values: v, budget: settings.budget, linear: linear)
            return Variant(name: name, keys: "\(k)", values: "\(v)",
                           bytesPerSpan: equalBytes ? (k == .evict ? 2 * StoredMatrix.bytes(rows: evictedKept(plan), cols: plan.headDim,
                                                                                             precision: plan.keyPrecision) : plan.bytes) : nil,
                           outputError: m.output, attentionKL: k == .evict ? nil : m.kl, perLayerOutputError: m.perLayer)
        }
    }

    /// Tokens eviction keeps in the same bytes: whole tokens (key and value, at the keys' precision).
    func evictedKept(_ plan: SpanPlan) -> Int {
        let total = Double(plan.fullBytes) * (1 - settings.budget.ratio), d = plan.headDim
        let perToken = plan.keyPrecision == .int8 ? 2 * d : 4 * d, fixed = plan.keyPrecision == .int8 ? 4 * d : 0
        return max(1, min(plan.tokens, Int((total - Double(fixed)) / Double(perToken))))
    }

    /// The K/V split at the adapter's ratio: for each key ratio, refit the linear map on the training samples of
    /// `store` and measure linear keys + PCA values on the held-out ones.
    public func splitSweep(store: CacheStore, held: [CacheSample], keyRatios: [Double], log: (String) -> Void) throws -> [SplitPoint] {
        let layout = store.manifest.layout
        return try keyRatios.map { rK in
            var budget = settings.budget
            budget.keyRatio = rK
            let fit = CapsuleFit(budget: budget, policy: settings.policy, neighbours: settings.neighbours, validationEvery: validationEvery)
            let (model, layers) = try fit.run(store: store, ropeBase: ropeBase, progress: false)
            let m = try measure(held, layout: layout, keys: .linear, values: .pca, budget: budget, linear: model)
            let plan = budget.plan(tokens: 64, headDim: layout.headDim)
            let mean = { (f: (CapsuleFit.LayerReport) -> Double) in layers.map(f).reduce(0, +) / Double(max(layers.count, 1)) }
            log(String(format: "key ratio %.2f: %d keys, value rank %@, output error %.4f, KL %.4f", rK, plan.keptKeys,
                       plan.valueRank.map(String.init) ?? "raw", m.output, m.kl))
            return SplitPoint(keyRatio: rK, keptKeys: plan.keptKeys, valueRank: plan.valueRank, measuredRatio: plan.measuredRatio,
                              outputError: m.output, attentionKL: m.kl, keyError: mean(\.keyErrorLinear), valueError: mean(\.valueError))
        }
    }

    private func measure(_ held: [CacheSample], layout: CacheLayout, keys keyMode: KeyMode, values valueMode: ValueMode,
                         budget: CapsuleBudget, linear: LinearKeyReconstructor?) throws -> (output: Double, kl: Double, perLayer: [Double]) {
        let d = layout.headDim, group = layout.queryHeads / layout.kvHeads
        guard settings.policy != .scored, settings.layers == nil else {
            throw KVCError("the ablation measures one structured retention policy and one budget for every layer; "
                           + "this adapter has per-layer settings or scored retention (measure it with kvc-eval --method capsule)")
        }
        let rope = RotaryEmbedding(headDim: d, base: ropeBase)
        var err = [Double](repeating: 0, count: layout.layers), norm = err, klSum = 0.0, rowsSeen = 0
        for s in held {
            let n = s.visionCount, t = s.textCount
            let plan = budget.plan(tokens: n, headDim: d)
            let keep = settings.policy.mask(grids: s.grids, kept: keyMode == .evict ? evictedKept(plan) : plan.keptKeys)
            let nb = GridNeighbours(grids: s.grids, keep: keep, count: settings.neighbours)
            // Values dropped at the same bytes: keep as many raw float16 values as the PCA's bytes buy, copy the rest.
            let valueKeep = settings.policy.mask(grids: s.grids, kept: min(n, max(1, plan.valueBytes / (2 * d))))
            let valueNearest = GridNeighbours(grids: s.grids, keep: valueKeep, count: 1, radius: 8)
            let allKeys = HalfConversion.halfToFloat(s.keys), allValues = HalfConversion.halfToFloat(s.values)
            let allQueries = HalfConversion.halfToFloat(s.queries)
            for l in 0..<layout.layers {
                for h in 0..<layout.kvHeads {
                    let base = ((l * layout.kvHeads + h) * n) * d
                    let k = Array(allKeys[base..<(base + n * d)]), v = Array(allValues[base..<(base + n * d)])
                    let k2 = rebuildKeys(k, mode: keyMode, nb: nb, plan: plan, layer: l, head: h, positions: s.visionPositions,
                                         linear: linear, rope: rope)
                    var v2 = try rebuildValues(v, mode: valueMode, plan: plan, nearest: valueNearest, n: n, d: d)
                    if keyMode == .evict {   // the kept tokens' values, stored like their keys
                        let kept = StoredMatrix(nb.retained.flatMap { Array(v[($0 * d)..<(($0 + 1) * d)]) }, rows: nb.retained.count,
                                                cols: d, precision: plan.keyPrecision).floats()
                        for (r, j) in nb.retained.enumerated() { for e in 0..<d { v2[j * d + e] = kept[r * d + e] } }
                    }
                    let columns = keyMode == .evict ? nb.retained : Array(0..<n)
                    for g in 0..<group {
                        let qb = ((l * layout.queryHeads + h * group + g) * t) * d
                        let q = Array(allQueries[qb..<(qb + t * d)])
                        let (o, p) = attend(q, k, v, rows: t, columns: Array(0..<n), d: d)
                        let (o2, p2) = attend(q, k2, v2, rows: t, columns: columns, d: d)
                        for i in 0..<(t * d) { err[l] += Double((o2[i] - o[i]) * (o2[i] - o[i])); norm[l] += Double(o[i] * o[i]) }
                        if keyMode != .evict {
                            for i in 0..<(t * n) where p[i] > 0 { klSum += Double(p[i]) * log(Double(p[i]) / max(Double(p2[i]), 1e-30)) }
                            rowsSeen += t
                        }
                    }
                }
            }
        }
        let perLayer = (0..<layout.layers).map { (err[$0] / max(norm[$0], 1e-30)).squareRoot() }
        let total = (err.reduce(0, +) / max(norm.reduce(0, +), 1e-30)).squareRoot()
        return (total, klSum / Double(max(rowsSeen, 1)), perLayer)
    }

    private func rebuildKeys(_ k: [Float], mode: KeyMode, nb: GridNeighbours, plan: SpanPlan, layer: Int, head: Int,
                             positions: [Int32], linear: LinearKeyReconstructor?, rope: RotaryEmbedding) -> [Float] {
        let d = plan.headDim
        if mode == .exact { return k }
        let retained = StoredMatrix(nb.retained.flatMap { Array(k[($0 * d)..<(($0 + 1) * d)]) }, rows: nb.retained.count,
                                    cols: d, precision: plan.keyPrecision).floats()
        var out = k
        for (r, j) in nb.retained.enumerated() { for e in 0..<d { out[j * d + e] = retained[r * d + e] } }
        var dropped: [Float]
        switch mode {
        case .exact, .evict: return out
        case .nearest: dropped = nb.nearestCopy(retainedKeys: retained, positions: positions, rope: rope)
        case .linear, .mlp:
            dropped = [Float](repeating: 0, count: nb.dropped.count * d)
            _ = retained.withUnsafeBufferPointer {
                linear!.reconstruct(layer: layer, head: head, neighbours: nb, retainedKeys: $0.baseAddress!, positions: positions,
                                    into: &dropped)
            }
            if mode == .mlp {
                settings.keyResidual?.addResidual(layer: layer, head: head, neighbours: nb, retainedKeys: retained,
                                                  positions: positions, rope: rope, dropped: &dropped)
            }
        }
        for (t, j) in nb.dropped.enumerated() { for e in 0..<d { out[j * d + e] = dropped[t * d + e] } }
        return out
    }

    private func rebuildValues(_ v: [Float], mode: ValueMode, plan: SpanPlan, nearest: GridNeighbours, n: Int, d: Int) throws -> [Float] {
        switch mode {
        case .exact: return v
        case .pca:
            guard let q = plan.valueRank else { return HalfConversion.halfToFloat(HalfConversion.floatToHalf(v)) }
            return try v.withUnsafeBufferPointer {
                try FactoredValues(values: $0, tokens: n, headDim: d, rank: q, precision: plan.valuePrecision)
            }.reconstruct()
        case .dropped:
            var out = v
            for (t, j) in nearest.dropped.enumerated() {
                guard let src = nearest.neighbours[t].first.map({ nearest.retained[$0] }) else { continue }
                for e in 0..<d { out[j * d + e] = v[src * d + e] }
            }
            return out
        }
    }

    /// Attention of `rows` queries over the given columns of the span: output `[rows, d]` and weights `[rows, N]`
    /// (zero outside `columns`).
    private func attend(_ q: [Float], _ k: [Float], _ v: [Float], rows: Int, columns: [Int], d: Int) -> ([Float], [Float]) {
        let n = k.count / d, scale = 1 / Float(d).squareRoot()
        var logits = [Float](repeating: 0, count: rows * n)
        BLAS.gemm(transB: true, m: rows, n: n, k: d, alpha: scale, a: q, b: k, c: &logits)
        var p = [Float](repeating: 0, count: rows * n)
        for r in 0..<rows {
            let m = columns.map { logits[r * n + $0] }.max() ?? 0
            var total: Float = 0
            for c in columns { let e = exp(logits[r * n + c] - m); p[r * n + c] = e; total += e }
            for c in columns { p[r * n + c] /= total }
        }
        var o = [Float](repeating: 0, count: rows * d)
        BLAS.gemm(m: rows, n: d, k: n, a: p, b: v, c: &o)
        return (o, p)
    }
}
