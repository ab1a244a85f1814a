import Foundation
import KVCBackbone
import KVCCollect
import KVCCore

/// Fits the linear key reconstructor of a budget on collected caches and measures, on held-out samples, what each
/// side of the capsule costs: per-layer relative error of rebuilt keys (linear vs. nearest-neighbour copy), the value
/// energy the PCA rank keeps, and the attention-geometry error — KL between the text queries' attention over true keys
/// and over rebuilt keys.
public struct CapsuleFit {
    public struct LayerReport: Codable, Sendable {
        public var layer: Int
        public var keyErrorLinear: Double
        public var keyErrorNearest: Double
        public var valueError: Double
        public var attentionKLLinear: Double
        public var attentionKLNearest: Double
        enum CodingKeys: String, CodingKey {
            case layer, keyErrorLinear = "key_rel_error_linear", keyErrorNearest = "key_rel_error_nearest"
            case valueError = "value_rel_error", attentionKLLinear = "attention_kl_linear", attentionKLNearest = "attention_kl_nearest"
        }
    }

    public var budget: CapsuleBudget
    public var policy: RetentionPolicy
    public var neighbours: Int
    public var ridge: Double
    /// Every `validationEvery`-th sample is held out.
    public var validationEvery: Int
    /// With score-based retention, neighbour configurations seen fewer times in training keep the neighbour-mean
    /// fallback (`LinearKeyReconstructorFit.minCount`).
    public static let minScoredConfigurationCount = 64
    /// Per-layer settings from the recipe's `layers:` section (nil: every layer uses `budget` and `policy`).
    public var layers: [CapsuleLayerSettings]?

    public init(budget: CapsuleBudget, policy: RetentionPolicy = .strided, neighbours: Int = 4, ridge: Double = 1e-3,
                validationEvery: Int = 5, layers: [CapsuleLayerSettings]? = nil) {
        self.budget = budget
        self.policy = policy
        self.neighbours = neighbours
        self.ridge = ridge
        self.validationEvery = validationEvery
        self.layers = layers
    }

    /// The settings of layer `l`.
    public func settings(layer l: Int) -> CapsuleLayerSettings {
        if let layers, layers.indices.contains(l) { return layers[l] }
        return CapsuleLayerSettings(budget: budget, policy: policy)
    }

    /// `[layer][head]` neighbourhoods of a sample as the capsule cache would build them (structured masks are shared by
    /// the heads of a layer and by consecutive layers with the same settings).
    public func neighbourhoods(_ s: CacheSample, layout: CacheLayout) -> [[GridNeighbours]] {
        var out: [[GridNeighbours]] = []
        for l in 0..<layout.layers {
            let here = settings(layer: l)
            if here.policy != .scored {
                if l > 0, settings(layer: l - 1) == here { out.append(out[l - 1]); continue }
                let nb = here.neighbourhood(s, layer: l, head: 0, layout: layout, neighbours: neighbours)
                out.append(Array(repeating: nb, count: layout.kvHeads))
            } else {
                out.append((0..<layout.kvHeads).map { here.neighbourhood(s, layer: l, head: $0, layout: layout, neighbours: neighbours) })
            }
        }
        return out
    }

    /// Streams `store` twice: once to fit, once to measure on the held-out samples.
    public func run(store: CacheStore, ropeBase: Double, progress: Bool = true) throws
        -> (reconstructor: LinearKeyReconstructor, layers: [LayerReport]) {
        let layout = store.manifest.layout
        let d = layout.headDim
        let rope = RotaryEmbedding(headDim: d, base: ropeBase)
        let scored = (0..<layout.layers).contains { settings(layer: $0).policy == .scored }
        var fit = LinearKeyReconstructorFit(layers: layout.layers, kvHeads: layout.kvHeads, headDim: d, rope: rope, ridge: ridge,
                                            minCount: scored ? Self.minScoredConfigurationCount : 1)
        let bar = Progress("fit key reconstructor", total: store.count, unit: "samples", enabled: progress)
        var index = 0
        try store.forEachSample { s in
            defer { index += 1; bar.advance() }
            guard index % validationEvery != 0 else { return }
            let nb = neighbourhoods(s, layout: layout)
            let keys = HalfConversion.halfToFloat(s.keys)
            let n = s.visionCount
            keys.withUnsafeBufferPointer { k in
                for l in 0..<layout.layers {
                    for h in 0..<layout.kvHeads {
                        fit.add(layer: l, head: h, keys: k.baseAddress! + ((l * layout.kvHeads + h) * n) * d,
                                positions: s.visionPositions, neighbours: nb[l][h])
                    }
                }
            }
        }
        let model = fit.solve()
        var sums = [[Double]](repeating: [Double](repeating: 0, count: 8), count: layout.layers)
        index = 0
        try store.forEachSample { s in
            defer { index += 1 }
            guard index % validationEvery == 0 else { return }
            try measure(s, model: model, rope: rope, layout: layout, into: &sums)
        }
        let reports = sums.enumerated().map { l, v in
            LayerReport(layer: l, keyErrorLinear: (v[0] / max(v[2], 1e-30)).squareRoot(),
                        keyErrorNearest: (v[1] / max(v[2], 1e-30)).squareRoot(),
                        valueError: (v[3] / max(v[4], 1e-30)).squareRoot(),
                        attentionKLLinear: v[5] / max(v[7], 1), attentionKLNearest: v[6] / max(v[7], 1))
        }
        return (model, reports)
    }

    /// Adds, per layer: [linear key err², nearest key err², key norm², value err², value norm², KL linear, KL nearest, queries].
    private func measure(_ s: CacheSample, model: LinearKeyReconstructor, rope: RotaryEmbedding, layout: CacheLayout,
                         into sums: inout [[Double]]) throws {
        let d = layout.headDim, n = s.visionCount, t = s.textCount
        let neighbourhoods = neighbourhoods(s, layout: layout)
        let keys = HalfConversion.halfToFloat(s.keys), values = HalfConversion.halfToFloat(s.values)
        let queries = HalfConversion.halfToFloat(s.queries)
        let group = layout.queryHeads / layout.kvHeads
        for l in 0..<layout.layers {
            let plan = settings(layer: l).plan(tokens: n, headDim: d)
            for h in 0..<layout.kvHeads {
                let nb = neighbourhoods[l][h]
                let base = ((l * layout.kvHeads + h) * n) * d
                let trueKeys = Array(keys[base..<(base + n * d)])
                // Retained keys as the cache stores them (int8 rounding included), rebuilt keys around them.
                let retained = StoredMatrix(nb.retained.flatMap { Array(trueKeys[($0 * d)..<(($0 + 1) * d)]) },
                                            rows: nb.retained.count, cols: d, precision: plan.keyPrecision).floats()
                var linear = trueKeys
                for (r, j) in nb.retained.enumerated() { for e in 0..<d { linear[j * d + e] = retained[r * d + e] } }
                var nearest = linear
                var dropped = [Float](repeating: 0, count: nb.dropped.count * d)
                retained.withUnsafeBufferPointer {
                    model.reconstruct(layer: l, head: h, neighbours: nb, retainedKeys: $0.baseAddress!,
                                      positions: s.visionPositions, into: &dropped)
                }
                let copied = nb.nearestCopy(retainedKeys: retained, positions: s.visionPositions, rope: rope)
                for (i, j) in nb.dropped.enumerated() {
                    for e in 0..<d {
                        linear[j * d + e] = dropped[i * d + e]
                        nearest[j * d + e] = copied[i * d + e]
                    }
                    for e in 0..<d {
                        let x = Double(trueKeys[j * d + e])
                        sums[l][0] += pow(Double(linear[j * d + e]) - x, 2)
                        sums[l][1] += pow(Double(nearest[j * d + e]) - x, 2)
                        sums[l][2] += x * x
                    }
                }
                let v = Array(values[base..<(base + n * d)])
                if let q = plan.valueRank {
                    let rebuilt = try v.withUnsafeBufferPointer {
                        try FactoredValues(values: $0, tokens: n, headDim: d, rank: q, precision: plan.valuePrecision)
                    }.reconstruct()
                    for i in 0..<(n * d) { sums[l][3] += pow(Double(rebuilt[i] - v[i]), 2); sums[l][4] += Double(v[i] * v[i]) }
                } else {
                    sums[l][4] += v.reduce(0.0) { $0 + Double($1 * $1) }
                }
                // Attention of the text queries of this KV head's query group over the vision keys.
                for g in 0..<group {
                    let qh = h * group + g
                    for i in 0..<t {
                        let q = Array(queries[(((l * layout.queryHeads + qh) * t) + i) * d..<((((l * layout.queryHeads + qh) * t) + i) * d + d)])
                        let p = softmaxScores(q, trueKeys, n: n, d: d)
                        sums[l][5] += kl(p, softmaxScores(q, linear, n: n, d: d))
                        sums[l][6] += kl(p, softmaxScores(q, nearest, n: n, d: d))
                        sums[l][7] += 1
                    }
                }
            }
        }
    }
}

private func softmaxScores(_ q: [Float], _ keys: [Float], n: Int, d: Int) -> [Double] {
    let scale = 1 / Double(d).squareRoot()
    var s = (0..<n).map { j -> Double in
        var dot = 0.0
        for e in 0..<d { dot += Double(q[e]) * Double(keys[j * d + e]) }
        return dot * scale
    }
    let m = s.max() ?? 0
    var total = 0.0
    for j in 0..<n { s[j] = exp(s[j] - m); total += s[j] }
    return s.map { $0 / total }
}

private func kl(_ p: [Double], _ q: [Double]) -> Double {
    zip(p, q).reduce(0) { $0 + ($1.0 > 0 ? $1.0 * log($1.0 / max($1.1, 1e-300)) : 0) }
}
