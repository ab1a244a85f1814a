import KVCBackbone
import KVCCollect
import KVCCore

/// How the capsule rebuilds the keys it dropped.
public enum KeyReconstruction: Sendable {
    /// The fitted RoPE-equivariant linear map (DESIGN §2.1).
    case linear(LinearKeyReconstructor)
    /// Copy the nearest retained neighbour, re-rotated to the dropped token's position (ablation).
    case nearest
    /// Leave dropped tokens out of attention entirely: eviction at the same bytes (ablation).
    case evict
}

/// Everything a capsule cache needs besides the model: the budget, the retention policy and the key reconstructor,
/// globally and optionally per layer.
public struct CapsuleSettings: Sendable {
    public var budget: CapsuleBudget
    public var policy: RetentionPolicy
    public var neighbours: Int
    public var keys: KeyReconstruction
    /// How attention reads the compressed span: fused (default, nothing rebuilt) or dense (rebuilt every step).
    public var mode: CapsuleAttentionMode
    /// Trained nonlinear correction of the linear keys, dense mode only (the fused path evaluates the linear part).
    public var keyResidual: KeyResidualMLP?
    /// One entry per layer when the recipe chose settings per layer; nil = every layer uses the global ones.
    public var layers: [CapsuleLayerSettings]?

    public init(budget: CapsuleBudget, policy: RetentionPolicy = .strided, neighbours: Int = 4, keys: KeyReconstruction,
                mode: CapsuleAttentionMode = .fused, keyResidual: KeyResidualMLP? = nil, layers: [CapsuleLayerSettings]? = nil) {
        self.budget = budget
        self.policy = policy
        self.neighbours = neighbours
        self.keys = keys
        self.mode = mode
        self.keyResidual = keyResidual
        self.layers = layers
    }

    /// The settings of layer `l`: its own, or the global ones.
    public func layer(_ l: Int) -> CapsuleLayerSettings {
        if let layers, layers.indices.contains(l) { return layers[l] }
        let kind: KeyReconstructorKind
        switch keys {
        case .nearest: kind = .nearest
        default: kind = keyResidual?.layers.indices.contains(l) == true && keyResidual?.layers[l] != nil ? .mlp : .linear
        }
        return CapsuleLayerSettings(budget: budget, policy: policy, reconstructor: kind)
    }

    /// Whether any layer waits for the question's queries before it can compress.
    public var isQuestionAware: Bool { (layers?.map(\.policy) ?? [policy]).contains(.scored) }
}

/// The KVCapsule cache (DESIGN §2). During prefill it is a plain float16 cache. `compress(grids:visionPositions:)`
/// then replaces the vision span of every layer by its capsule — retained keys plus value factors — and frees the full
/// span. Afterwards, in fused mode (the default) attention reads the capsule directly (`FusedCapsuleAttention.swift`);
/// in dense mode each `withLayer` rebuilds that layer's vision K/V into one reused float32 scratch buffer and hands
/// attention an ordinary dense view: attention runs the same code as with the plain cache.
///
/// Layers may differ in budget, retention policy and key reconstructor (`CapsuleSettings.layers`), and with a scored
/// policy each KV head of a layer has its own retained set. A scored layer is compressed when the question's queries
/// reach it: `compress` leaves it whole, and the first attention call of that layer after the vision span (the
/// question's prefill, the question following the image tokens in the same user turn) scores the span with those
/// queries (`RetentionScores`), compresses the layer and then attends to the compressed form — the question and every
/// answer token see the capsule, as with a structured policy. A prefix shared by several questions therefore keeps the
/// retained set chosen by the first question; measure question-aware retention with one question per prefix.
public final class CapsuleCache: KVCache {
    public let layerCount: Int
    public let kvHeadCount: Int
    public let headDim: Int
    public let settings: CapsuleSettings
    let rope: RotaryEmbedding
    /// Question rows (the last ones of the call) that score a scored layer's span.
    public static let scoreWindow = 32

    // Per layer: the entries held exactly (before compression everything, afterwards the text positions) and their
    // positions, ascending. Layers are separate stores because a scored layer compresses in the middle of a forward call.
    private(set) var stores: [PlainKVCache]
    private(set) var storePositions: [[Int32]]
    private var length_ = 0

    /// One KV head's compressed span: its neighbourhoods (the retained set may differ per head), retained keys and values.
    struct HeadCapsule {
        var neighbours: GridNeighbours
        var retainedKeys: StoredMatrix      // [kept, headDim] float16 or int8 (per-channel scales)
        var values: FactoredValues?         // nil when the budget allows the raw values
        var rawValues: [UInt16]             // [N, headDim] float16 when the budget allows raw
    }
    struct LayerCapsule {
        var plan: SpanPlan
        var reconstructor: KeyReconstructorKind
        var heads: [HeadCapsule]
        var maskBytes: Int
    }
    // The compressed vision span (nil before `compress`); a nil layer waits for the question's queries.
    struct Capsule {
        var positions: [Int32]              // of the vision tokens, ascending
        var grids: [ImageGrid]
        var layers: [LayerCapsule?]
    }
    private(set) var capsule: Capsule?
    // What the fused attention path derives from the capsule once per layer (FusedCapsuleAttention.swift).
    var fusedLayers: [[FusedSpanHead]?] = []
    var fusedLayoutCache: [FusedSpanLayout.Key: FusedSpanLayout] = [:]
    // Reused per layer: dense keys/values in position order, and each entry's position.
    private var scratchKeys: [Float] = []
    private var scratchValues: [Float] = []
    private var scratchPositions: [Int32] = []

    public init(config: LlamaConfig, rope: RotaryEmbedding, settings: CapsuleSettings) {
        layerCount = config.layerCount
        kvHeadCount = config.kvHeadCount
        headDim = config.headDim
        self.rope = rope
        self.settings = settings
        stores = (0..<config.layerCount).map { _ in
            PlainKVCache(layerCount: 1, kvHeadCount: config.kvHeadCount, headDim: config.headDim)
        }
        storePositions = Array(repeating: [], count: config.layerCount)
    }

    public var length: Int { length_ }

    public func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        stores[layer].append(layer: 0, keys: keys, values: values, count: count)
        storePositions[layer] += (length_..<(length_ + count)).map { Int32($0) }
        if layer == layerCount - 1 { length_ += count }
    }

    public func trim(to newLength: Int) {
        precondition(capsule == nil || newLength >= Int(capsule!.positions.last ?? 0) + 1,
                     "CapsuleCache.trim: cannot trim into the compressed vision span")
        for l in 0..<layerCount {
            let keep = storePositions[l].prefix { Int($0) < newLength }.count
            stores[l].trim(to: keep)
            storePositions[l].removeLast(storePositions[l].count - keep)
        }
        length_ = min(length_, newLength)
    }

    // MARK: Compression

    /// Compresses images whose grids are given by prompt position (`start` = position of the top-left token, tokens
    /// row-major and contiguous), as `VisionLanguageModel.Prefix` describes them.
    public func compress(imageGridsAtPositions grids: [ImageGrid]) throws {
        var cursor = 0, spanGrids: [ImageGrid] = [], positions: [Int32] = []
        for g in grids {
            spanGrids.append(ImageGrid(start: cursor, rows: g.rows, cols: g.cols))
            positions += (g.start..<(g.start + g.count)).map { Int32($0) }
            cursor += g.count
        }
        try compress(grids: spanGrids, visionPositions: positions)
    }

    /// Compresses the vision tokens at `visionPositions` in every layer (a scored layer when the question's queries
    /// reach it); `grids` tile the span in order, with `start` an index into the span (as in `CacheSample`).
    public func compress(grids: [ImageGrid], visionPositions: [Int32]) throws {
        precondition(capsule == nil, "CapsuleCache.compress: already compressed")
        let n = visionPositions.count
        var cursor = 0
        for g in grids {
            guard g.start == cursor, g.rows > 0, g.cols > 0 else {
                throw KVCError("capsule: grid \(g) does not continue the vision span at index \(cursor) (grids index the span)")
            }
            cursor += g.count
        }
        guard n == cursor, n > 0 else {
            throw KVCError("capsule: \(n) vision positions for grids covering \(cursor) tokens")
        }
        let held = Set(storePositions[layerCount - 1])
        guard visionPositions.allSatisfy({ held.contains($0) }) else { throw KVCError("capsule: a vision position is not in the cache") }
        capsule = Capsule(positions: visionPositions, grids: grids, layers: Array(repeating: nil, count: layerCount))
        fusedLayers = Array(repeating: nil, count: layerCount)
        for l in 0..<layerCount where settings.layer(l).policy != .scored {
            try compressLayer(l, scores: nil)
        }
    }

    /// Scores a waiting scored layer's span with `rows` query rows (`[rows][headCount * headDim]`) and compresses it.
    func compressLayer(_ layer: Int, queries: UnsafePointer<Float>, rows: Int, headCount: Int) throws {
        let d = headDim, group = headCount / kvHeadCount, window = min(rows, Self.scoreWindow)
        let last = queries + (rows - window) * headCount * d
        try compressLayer(layer) { head, keys, n in
            RetentionScores.pooled(rows: window, group: group,
                                   query: { i, g in last + i * headCount * d + (head * group + g) * d },
                                   keys: keys, tokens: n, headDim: d)
        }
    }

    /// Replaces the vision span of one layer by its capsule and drops it from the layer's store. `scores` gives a
    /// scored policy its per-token scores from a head's span keys `[n, headDim]`.
    private func compressLayer(_ l: Int, scores: ((_ head: Int, _ keys: UnsafePointer<Float>, _ n: Int) -> [Float])?) throws {
        guard var capsule, capsule.layers[l] == nil else { return }
        let layerSettings = settings.layer(l)
        let n = capsule.positions.count, d = headDim
        let plan = layerSettings.plan(tokens: n, headDim: d)
        let positions = storePositions[l]
        var isVision = [Bool](repeating: false, count: positions.count)
        let indexOf = Dictionary(positions.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        let visionIndex = try capsule.positions.map { p -> Int in
            guard let i = indexOf[p] else { throw KVCError("capsule: vision position \(p) is not in layer \(l)") }
            isVision[i] = true
            return i
        }
        let textIndex = positions.indices.filter { !isVision[$0] }
        let structured = layerSettings.policy == .scored ? nil
            : GridNeighbours(grids: capsule.grids, keep: layerSettings.policy.mask(grids: capsule.grids, kept: plan.keptKeys),
                             count: settings.neighbours)
        var heads: [HeadCapsule] = []
        var restK = [Float](repeating: 0, count: kvHeadCount * textIndex.count * d), restV = restK
        var spanK = [Float](repeating: 0, count: n * d), spanV = [Float](repeating: 0, count: n * d)
        try stores[l].withLayer(0) { view in
            guard case .float16(let keys, let values) = view.storage else { throw KVCError("capsule: unexpected cache storage") }
            for h in 0..<kvHeadCount {
                let base = h * view.headStride
                for (j, idx) in visionIndex.enumerated() {
                    for e in 0..<d {
                        spanK[j * d + e] = Float(keys[base + idx * d + e])
                        spanV[j * d + e] = Float(values[base + idx * d + e])
                    }
                }
                for (j, idx) in textIndex.enumerated() {
                    for e in 0..<d {
                        restK[(h * textIndex.count + j) * d + e] = Float(keys[base + idx * d + e])
                        restV[(h * textIndex.count + j) * d + e] = Float(values[base + idx * d + e])
                    }
                }
                let nb = try structured ?? {
                    guard let scores else { throw KVCError("capsule: layer \(l) uses scored retention and needs the question's queries") }
                    let s = spanK.withUnsafeBufferPointer { scores(h, $0.baseAddress!, n) }
                    return GridNeighbours(grids: capsule.grids, keep: layerSettings.policy.mask(grids: capsule.grids, kept: plan.keptKeys, scores: s),
                                          count: settings.neighbours)
                }()
                let retained = StoredMatrix(nb.retained.flatMap { Array(spanK[($0 * d)..<(($0 + 1) * d)]) },
                                            rows: nb.retained.count, cols: d, precision: plan.keyPrecision)
                if let q = plan.valueRank {
                    let factors = try spanV.withUnsafeBufferPointer {
                        try FactoredValues(values: $0, tokens: n, headDim: d, rank: q, precision: plan.valuePrecision)
                    }
                    heads.append(HeadCapsule(neighbours: nb, retainedKeys: retained, values: factors, rawValues: []))
                } else {
                    heads.append(HeadCapsule(neighbours: nb, retainedKeys: retained, values: nil, rawValues: HalfConversion.floatToHalf(spanV)))
                }
            }
        }
        let remaining = PlainKVCache(layerCount: 1, kvHeadCount: kvHeadCount, headDim: d, initialCapacity: max(textIndex.count + 64, 64))
        restK.withUnsafeBufferPointer { k in restV.withUnsafeBufferPointer { v in
            remaining.append(layer: 0, keys: k.baseAddress!, values: v.baseAddress!, count: textIndex.count)
        } }
        stores[l] = remaining   // the full vision span of this layer is freed here
        storePositions[l] = textIndex.map { positions[$0] }
        capsule.layers[l] = LayerCapsule(plan: plan, reconstructor: layerSettings.reconstructor, heads: heads,
                                         maskBytes: layerSettings.policy.maskBytes(tokens: n))
        self.capsule = capsule
    }

    // MARK: Reading

    public func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        let positionsOfText = storePositions[layer]
        guard let capsule, let compressed = capsule.layers[layer] else {
            // Not compressed (yet): the layer's own entries; positions matter once a compressed layer exists, and an
            // empty store has none (nil base address).
            return try positionsOfText.withUnsafeBufferPointer { p in
                try stores[layer].withLayer(0) { view in
                    try body(KVLayerView(storage: view.storage, count: view.count, headStride: view.headStride, positions: p.baseAddress))
                }
            }
        }
        let d = headDim, n = capsule.positions.count
        let evict: Bool
        if case .evict = settings.keys { evict = true } else { evict = false }
        // Entries in position order: text and (possibly only the retained) vision tokens merged. Eviction is an
        // ablation of structured retention, where all heads of a layer keep the same tokens.
        let visionEntries: [Int] = evict ? compressed.heads[0].neighbours.retained : Array(0..<n)
        let textCount = positionsOfText.count
        let total = textCount + visionEntries.count
        if scratchKeys.count < kvHeadCount * total * d {
            scratchKeys = [Float](repeating: 0, count: kvHeadCount * max(total, 64) * 2 * d)
            scratchValues = scratchKeys
        }
        let capacity = scratchKeys.count / (kvHeadCount * d)
        var order: [(isVision: Bool, index: Int)] = []
        order.reserveCapacity(total)
        var ti = 0, vi = 0
        while ti < textCount || vi < visionEntries.count {
            if vi < visionEntries.count && (ti == textCount || capsule.positions[visionEntries[vi]] < positionsOfText[ti]) {
                order.append((true, visionEntries[vi])); vi += 1
            } else {
                order.append((false, ti)); ti += 1
            }
        }
        scratchPositions = order.map { $0.isVision ? capsule.positions[$0.index] : positionsOfText[$0.index] }
        var denseK = [Float](repeating: 0, count: n * d), denseV = [Float](repeating: 0, count: n * d)
        stores[layer].withLayer(0) { view in
            guard case .float16(let keys, let values) = view.storage else { preconditionFailure("capsule: plain cache is float16") }
            for h in 0..<kvHeadCount {
                rebuildVision(layer: layer, head: h, capsule: capsule, compressed: compressed, keys: &denseK, values: &denseV)
                let base = h * view.headStride, out = h * capacity * d
                for (slot, entry) in order.enumerated() {
                    if entry.isVision {
                        for e in 0..<d {
                            scratchKeys[out + slot * d + e] = denseK[entry.index * d + e]
                            scratchValues[out + slot * d + e] = denseV[entry.index * d + e]
                        }
                    } else {
                        for e in 0..<d {
                            scratchKeys[out + slot * d + e] = Float(keys[base + entry.index * d + e])
                            scratchValues[out + slot * d + e] = Float(values[base + entry.index * d + e])
                        }
                    }
                }
            }
        }
        return try scratchKeys.withUnsafeBufferPointer { k in
            try scratchValues.withUnsafeBufferPointer { v in
                try scratchPositions.withUnsafeBufferPointer { p in
                    try body(KVLayerView(storage: .float32(keys: k.baseAddress!, values: v.baseAddress!), count: total,
                                         headStride: capacity * d, positions: p.baseAddress!))
                }
            }
        }
    }

    /// Dense vision keys and values `[N, headDim]` of one layer and head, rebuilt from the capsule.
    private func rebuildVision(layer: Int, head: Int, capsule: Capsule, compressed: LayerCapsule, keys: inout [Float],
                               values: inout [Float]) {
        let d = headDim, stored = compressed.heads[head], nb = stored.neighbours
        let kept = stored.retainedKeys.floats()
        for (r, j) in nb.retained.enumerated() { for e in 0..<d { keys[j * d + e] = kept[r * d + e] } }
        var dropped = [Float](repeating: 0, count: nb.dropped.count * d)
        switch settings.keys {
        case .linear(let model) where compressed.reconstructor != .nearest:
            kept.withUnsafeBufferPointer {
                model.reconstruct(layer: layer, head: head, neighbours: nb, retainedKeys: $0.baseAddress!,
                                  positions: capsule.positions, into: &dropped)
            }
            settings.keyResidual?.addResidual(layer: layer, head: head, neighbours: nb, retainedKeys: kept,
                                              positions: capsule.positions, rope: rope, dropped: &dropped)
        case .linear, .nearest:
            dropped = nb.nearestCopy(retainedKeys: kept, positions: capsule.positions, rope: rope)
        case .evict:
            break
        }
        for (t, j) in nb.dropped.enumerated() { for e in 0..<d { keys[j * d + e] = dropped[t * d + e] } }
        if let factors = stored.values {
            values.withUnsafeMutableBufferPointer { factors.reconstruct(into: $0.baseAddress!) }
        } else {
            let v = HalfConversion.halfToFloat(stored.rawValues)
            for i in 0..<(capsule.positions.count * d) { values[i] = v[i] }
        }
    }

    // MARK: Bytes

    /// Bytes of the compressed vision span (retained keys, value factors or raw values, keep masks). A scored layer
    /// still waiting for the question's queries counts at its plan, the bytes it will hold (until then its full span
    /// is in the text store and in `residentBytes`).
    public var visionBytes: Int {
        guard let c = capsule else { return 0 }
        let n = c.positions.count
        return (0..<layerCount).reduce(0) { sum, l in
            sum + (c.layers[l].map(Self.bytes) ?? kvHeadCount * settings.layer(l).plan(tokens: n, headDim: headDim).bytes)
        }
    }

    private static func bytes(_ layer: LayerCapsule) -> Int {
        layer.heads.reduce(0) { $0 + $1.retainedKeys.byteCount + ($1.values?.byteCount ?? 0) + 2 * $1.rawValues.count + layer.maskBytes }
    }

    /// Float16 bytes the full cache would hold for the same vision span.
    public var visionBytesFull: Int { (capsule?.positions.count ?? 0) * layerCount * kvHeadCount * headDim * 2 * 2 }

    /// Float16 bytes of the positions held exactly (text, and the span of a layer not yet compressed).
    public var textBytes: Int { stores.reduce(0) { $0 + $1.storedBytes } }

    public var residentBytes: Int {
        stores.reduce(0) { $0 + $1.residentBytes } + (capsule?.layers.reduce(0) { $0 + ($1.map(Self.bytes) ?? 0) } ?? 0)
            + 4 * (scratchKeys.count + scratchValues.count)
    }
}
