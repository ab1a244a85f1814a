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

/// Everything a capsule cache needs besides the model: the budget, the retention policy and the key reconstructor.
public struct CapsuleSettings: Sendable {
    public var budget: CapsuleBudget
    public var policy: RetentionPolicy
    public var neighbours: Int
    public var keys: KeyReconstruction
    /// How attention reads the compressed span: fused (default, nothing rebuilt) or dense (rebuilt every step).
    public var mode: CapsuleAttentionMode
    /// Trained nonlinear correction of the linear keys, dense mode only (the fused path evaluates the linear part).
    public var keyResidual: KeyResidualMLP?

    public init(budget: CapsuleBudget, policy: RetentionPolicy = .strided, neighbours: Int = 4, keys: KeyReconstruction,
                mode: CapsuleAttentionMode = .fused, keyResidual: KeyResidualMLP? = nil) {
        self.budget = budget
        self.policy = policy
        self.neighbours = neighbours
        self.keys = keys
        self.mode = mode
        self.keyResidual = keyResidual
    }
}

/// The KVCapsule cache (DESIGN §2). During prefill it is a plain float16 cache. `compress(grids:visionPositions:)`
/// then replaces the vision span of every layer by its capsule — retained keys plus value factors — and frees the full
/// span. Afterwards, in fused mode (the default) attention reads the capsule directly (`FusedCapsuleAttention.swift`);
/// in dense mode each `withLayer` rebuilds that layer's vision K/V into one reused float32 scratch buffer and hands
/// attention an ordinary dense view: attention runs the same code as with the plain cache.
public final class CapsuleCache: KVCache {
    public let layerCount: Int
    public let kvHeadCount: Int
    public let headDim: Int
    public let settings: CapsuleSettings
    let rope: RotaryEmbedding

    // Before compression everything lives here; afterwards it holds the text positions only.
    private(set) var text: PlainKVCache
    private(set) var textPositions: [Int32] = []
    private var length_ = 0

    // The compressed vision span (nil before `compress`).
    struct Capsule {
        var positions: [Int32]              // of the vision tokens, ascending
        var neighbours: GridNeighbours
        var retainedKeys: [StoredMatrix]    // [layer * kvHeads + head] → [kept, headDim] float16 or int8 (per-channel scales)
        var values: [[FactoredValues]]      // [layer][head]
        var rawValues: [[UInt16]]           // [layer * kvHeads + head] → [N, headDim] float16 when the budget allows raw
        var plan: SpanPlan
    }
    private(set) var capsule: Capsule?
    // What the fused attention path derives from the capsule once (FusedCapsuleAttention.swift).
    var fusedLayout: FusedSpanLayout?
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
        text = PlainKVCache(config: config)
    }

    public var length: Int { length_ }

    public func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        text.append(layer: layer, keys: keys, values: values, count: count)
        if layer == layerCount - 1 {
            textPositions += (length_..<(length_ + count)).map { Int32($0) }
            length_ += count
        }
    }

    public func trim(to newLength: Int) {
        precondition(capsule == nil || newLength >= Int(capsule!.positions.last ?? 0) + 1,
                     "CapsuleCache.trim: cannot trim into the compressed vision span")
        let keep = textPositions.filter { Int($0) < newLength }.count
        text.trim(to: keep)
        textPositions.removeLast(textPositions.count - keep)
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

    /// Compresses the vision tokens at `visionPositions` in every layer; `grids` tile the span in order, with `start`
    /// an index into the span (as in `CacheSample`).
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
        let plan = settings.budget.plan(tokens: n, headDim: headDim)
        let keep = settings.policy.mask(grids: grids, kept: plan.keptKeys)
        let nb = GridNeighbours(grids: grids, keep: keep, count: settings.neighbours)
        let isVision = Set(visionPositions)
        let textIndex = textPositions.enumerated().filter { !isVision.contains($0.element) }.map(\.offset)
        let visionIndex = visionPositions.map { p in textPositions.firstIndex(of: p) }
        guard visionIndex.allSatisfy({ $0 != nil }) else { throw KVCError("capsule: a vision position is not in the cache") }
        let d = headDim
        var retained: [StoredMatrix] = [], factored: [[FactoredValues]] = [], raw: [[UInt16]] = []
        let remaining = PlainKVCache(layerCount: layerCount, kvHeadCount: kvHeadCount, headDim: d,
                                     initialCapacity: max(textIndex.count + 64, 64))
        var spanK = [Float](repeating: 0, count: n * d), spanV = [Float](repeating: 0, count: n * d)
        for l in 0..<layerCount {
            var layerFactors: [FactoredValues] = []
            var restK = [Float](repeating: 0, count: kvHeadCount * textIndex.count * d), restV = restK
            try text.withLayer(l) { view in
                guard case .float16(let keys, let values) = view.storage else { throw KVCError("capsule: unexpected cache storage") }
                for h in 0..<kvHeadCount {
                    let base = h * view.headStride
                    for (j, idx) in visionIndex.enumerated() {
                        for e in 0..<d {
                            spanK[j * d + e] = Float(keys[base + idx! * d + e])
                            spanV[j * d + e] = Float(values[base + idx! * d + e])
                        }
                    }
                    for (j, idx) in textIndex.enumerated() {
                        for e in 0..<d {
                            restK[(h * textIndex.count + j) * d + e] = Float(keys[base + idx * d + e])
                            restV[(h * textIndex.count + j) * d + e] = Float(values[base + idx * d + e])
                        }
                    }
                    retained.append(StoredMatrix(nb.retained.flatMap { Array(spanK[($0 * d)..<(($0 + 1) * d)]) },
                                                 rows: nb.retained.count, cols: d, precision: plan.keyPrecision))
                    if let q = plan.valueRank {
                        layerFactors.append(try spanV.withUnsafeBufferPointer {
                            try FactoredValues(values: $0, tokens: n, headDim: d, rank: q, precision: plan.valuePrecision)
                        })
                        raw.append([])
                    } else {
                        raw.append(HalfConversion.floatToHalf(spanV))
                    }
                }
            }
            factored.append(layerFactors)
            restK.withUnsafeBufferPointer { k in restV.withUnsafeBufferPointer { v in
                remaining.append(layer: l, keys: k.baseAddress!, values: v.baseAddress!, count: textIndex.count)
            } }
        }
        text = remaining   // the full vision span is freed here
        textPositions = textIndex.map { textPositions[$0] }
        capsule = Capsule(positions: visionPositions, neighbours: nb, retainedKeys: retained, values: factored,
                          rawValues: raw, plan: plan)
    }

    // MARK: Reading

    public func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        guard let capsule else { return try text.withLayer(layer, body) }
        let d = headDim, n = capsule.positions.count
        let evict: Bool
        if case .evict = settings.keys { evict = true } else { evict = false }
        // Entries in position order: text and (possibly only the retained) vision tokens merged. The text store may
        // already hold this step's new positions (appended to this layer before the last layer commits them).
        let visionEntries: [Int] = evict ? capsule.neighbours.retained : Array(0..<n)
        let textCount = text.withLayer(layer) { $0.count }
        let positionsOfText = textPositions + (0..<max(0, textCount - textPositions.count)).map { Int32(length_ + $0) }
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
        text.withLayer(layer) { view in
            guard case .float16(let keys, let values) = view.storage else { preconditionFailure("capsule: plain cache is float16") }
            for h in 0..<kvHeadCount {
                rebuildVision(layer: layer, head: h, capsule: capsule, keys: &denseK, values: &denseV)
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
    private func rebuildVision(layer: Int, head: Int, capsule: Capsule, keys: inout [Float], values: inout [Float]) {
        let d = headDim, nb = capsule.neighbours, slot = layer * kvHeadCount + head
        let kept = capsule.retainedKeys[slot].floats()
        for (r, j) in nb.retained.enumerated() { for e in 0..<d { keys[j * d + e] = kept[r * d + e] } }
        var dropped = [Float](repeating: 0, count: nb.dropped.count * d)
        switch settings.keys {
        case .linear(let model):
            kept.withUnsafeBufferPointer {
                model.reconstruct(layer: layer, head: head, neighbours: nb, retainedKeys: $0.baseAddress!,
                                  positions: capsule.positions, into: &dropped)
            }
            settings.keyResidual?.addResidual(layer: layer, head: head, neighbours: nb, retainedKeys: kept,
                                              positions: capsule.positions, rope: rope, dropped: &dropped)
        case .nearest:
            dropped = nb.nearestCopy(retainedKeys: kept, positions: capsule.positions, rope: rope)
        case .evict:
            break
        }
        for (t, j) in nb.dropped.enumerated() { for e in 0..<d { keys[j * d + e] = dropped[t * d + e] } }
        if let _ = capsule.plan.valueRank {
            values.withUnsafeMutableBufferPointer { capsule.values[layer][head].reconstruct(into: $0.baseAddress!) }
        } else {
            let v = HalfConversion.halfToFloat(capsule.rawValues[slot])
            for i in 0..<(capsule.positions.count * d) { values[i] = v[i] }
        }
    }

    // MARK: Bytes

    /// Bytes of the compressed vision span (retained keys, value factors or raw values, keep masks).
    public var visionBytes: Int {
        guard let c = capsule else { return 0 }
        let keys = c.retainedKeys.reduce(0) { $0 + $1.byteCount }
        let values = c.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.byteCount } } + c.rawValues.reduce(0) { $0 + 2 * $1.count }
        return keys + values + layerCount * kvHeadCount * settings.policy.maskBytes(tokens: c.positions.count)
    }

    /// Float16 bytes the full cache would hold for the same vision span.
    public var visionBytesFull: Int { (capsule?.positions.count ?? 0) * layerCount * kvHeadCount * headDim * 2 * 2 }

    /// Float16 bytes of the text positions held exactly.
    public var textBytes: Int { text.storedBytes }

    public var residentBytes: Int { text.residentBytes + visionBytes + 4 * (scratchKeys.count + scratchValues.count) }
}
