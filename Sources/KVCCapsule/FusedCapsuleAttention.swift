import Dispatch
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif
import CDecodeKernels
import KVCBackbone
import KVCCore

/// How a compressed capsule cache serves attention.
public enum CapsuleAttentionMode: String, Sendable, CaseIterable {
    /// Attention reads the capsule directly and nothing is rebuilt (DESIGN §2.1): the default for serving.
    case fused
    /// Every step rebuilds the vision span into a dense scratch buffer for the shared attention kernel
    /// (paper-faithful; the accuracy reference).
    case dense
}

/// What the fused path needs about one KV head's compressed span beyond the stored tensors (built once per cache, on
/// the first fused step of its layer, and shared by every head with the same retained set): the dropped tokens grouped
/// by how their key is rebuilt.
///
/// With the RoPE-equivariant linear reconstructor, a dropped key is `k̂_j = Σ_m M_m k_{n_m}`, where
/// `M_m = A_m R(-δ_m)` multiplies RoPE pair i by the complex number `w_{m,i} = a_{m,i} e^{iΔ_m θ_i}`
/// (`a` = the fitted coefficient of the token's neighbour configuration, `Δ_m` = dropped position − neighbour position).
/// Then `q·k̂_j = Σ_m (M_m^T q)·k_{n_m}`, and `M_m^T q` multiplies each pair of q by `conj(w_{m,i})`. Tokens that share
/// a configuration and offsets share their transformed queries: one small product per group, slot and query head
/// per step, then `slots` dot products with retained keys per dropped token.
struct FusedSpanLayout {
    /// What a layout depends on besides the span's grids and positions.
    struct Key: Hashable {
        var retained: [Int]
        var nearest: Bool
        var evict: Bool
    }

    struct Group {
        /// The neighbour offsets the coefficients are fitted for.
        var configuration: LinearKeyReconstructor.Configuration
        var slots: Int
        /// `[slots][headDim]`: RoPE table (cos, sin interleaved) at each slot's position offset Δ.
        var rotations: [Float]
        /// Span index of each member (a dropped token).
        var members: [Int32]
        /// `[member][slot]`: index of the neighbour among the retained keys.
        var neighbours: [Int32]
    }

    let groups: [Group]
    /// Span index of each retained key, in stored order.
    let retainedSpan: [Int32]
    /// Span index of every vision entry in the order attention scores them: the retained keys, then each group's
    /// members (the value factors are read through it, so probabilities need no scatter into span order).
    let visionOrder: [Int32]
    /// Dropped tokens that take part in attention (all of them, except under eviction).
    let droppedCount: Int
    /// The groups flattened for one kernel call: members and slots of each group, and every group's neighbour
    /// indices back to back.
    let groupMembers: [Int32]
    let groupSlots: [Int32]
    let groupNeighbours: [Int32]

    init(neighbours nb: GridNeighbours, positions: [Int32], nearest: Bool, evict: Bool, rope: RotaryEmbedding) {
        let d = rope.headDim
        struct Key: Hashable { var configuration: [GridNeighbours.Offset]; var deltas: [Int] }
        var index: [Key: Int] = [:]
        var groups: [Group] = []
        for (t, j) in nb.dropped.enumerated() where !evict {
            var slots = nb.neighbours[t].count
            if nearest { slots = min(slots, 1) }
            let retained = nb.neighbours[t].prefix(slots)
            let deltas = retained.map { Int(positions[j]) - Int(positions[nb.retained[$0]]) }
            let key = Key(configuration: Array(nb.offsets[t].prefix(slots)), deltas: deltas)
            if index[key] == nil {
                index[key] = groups.count
                var rotations = [Float](repeating: 0, count: slots * d)
                rotations.withUnsafeMutableBufferPointer { r in
                    for (m, delta) in deltas.enumerated() { rope.fillTable(position: delta, into: r.baseAddress! + m * d) }
                }
                groups.append(Group(configuration: key.configuration, slots: slots, rotations: rotations, members: [],
                                    neighbours: []))
            }
            let g = index[key]!
            groups[g].members.append(Int32(j))
            groups[g].neighbours += retained.map { Int32($0) }
        }
        self.groups = groups
        retainedSpan = nb.retained.map { Int32($0) }
        visionOrder = retainedSpan + groups.flatMap(\.members)
        droppedCount = groups.reduce(0) { $0 + $1.members.count }
        groupMembers = groups.map { Int32($0.members.count) }
        groupSlots = groups.map { Int32($0.slots) }
        groupNeighbours = groups.flatMap(\.neighbours)
    }

    /// Complex coefficients `[slot][pair] (re, im)` of every group for one layer and head: the fitted linear map, or
    /// the identity (the neighbour's key as it is, re-rotated) for the nearest-neighbour copy.
    func coefficients(keys: KeyReconstruction, nearest: Bool, layer: Int, head: Int, headDim: Int) -> [[Float]] {
        groups.map { group -> [Float] in
            if case .linear(let model) = keys, !nearest {
                return model.coefficients(layer: layer, head: head, configuration: group.configuration).values
            }
            var one = [Float](repeating: 0, count: group.slots * headDim)
            for i in stride(from: 0, to: one.count, by: 2) { one[i] = 1 }
            return one
        }
    }
}

/// One KV head's fused layout and its transformed-query weights.
struct FusedSpanHead {
    let layout: FusedSpanLayout
    /// `w = a ⊙ e^{iΔθ}` (re, im per RoPE pair) of every group and slot, `[group][slot][headDim]` back to back: they
    /// depend on the layer, head and layout only, so they are built with the layout instead of at every step.
    let queryWeights: [Float]
    /// Where each group's weights start in `queryWeights`.
    let weightOffsets: [Int]

    init(layout: FusedSpanLayout, coefficients: [[Float]], headDim d: Int) {
        self.layout = layout
        var weights: [Float] = [], offsets: [Int] = []
        for (group, a) in zip(layout.groups, coefficients) {
            offsets.append(weights.count)
            for m in 0..<group.slots {
                for i in 0..<(d / 2) {
                    let ar = a[(m * d / 2 + i) * 2], ai = a[(m * d / 2 + i) * 2 + 1]
                    let cr = group.rotations[m * d + 2 * i], sr = group.rotations[m * d + 2 * i + 1]
                    weights.append(ar * cr - ai * sr)
                    weights.append(ar * sr + ai * cr)
                }
            }
        }
        queryWeights = weights
        weightOffsets = offsets
    }
}

extension CapsuleCache: FusedAttentionCache {
    /// The fused attention of one layer (DESIGN §2.1), or `false` to take the dense path: in dense mode, with a trained
    /// MLP key residual, before compression, when a query could precede part of the vision span, or for a stored form
    /// it does not read.
    public func attend(layer: Int, queries: UnsafePointer<Float>, count t: Int, firstPosition: Int, headCount: Int,
                       output: UnsafeMutablePointer<Float>, threads: Int) -> Bool {
        // A scored layer waits for the question: its first queries after the vision span choose what it keeps.
        if let c = capsule, c.layers[layer] == nil, let last = c.positions.last, Int(last) < firstPosition,
           headCount % kvHeadCount == 0 {
            // compress() checked every vision position is held, so this cannot fail; if it did, the layer would
            // stay whole and be read densely, exact but uncompressed.
            try? compressLayer(layer, queries: queries, rows: t, headCount: headCount)
        }
        // The trained MLP residual is evaluated by the dense rebuild only: fused attention takes the linear part.
        guard settings.mode == .fused, settings.keyResidual == nil, let capsule, let compressed = capsule.layers[layer],
              let last = capsule.positions.last, Int(last) < firstPosition,
              headDim % 8 == 0, headCount % kvHeadCount == 0 else { return false }
        for head in compressed.heads {
            guard head.retainedKeys.precision == .float16 || !head.retainedKeys.scalePerRow else { return false }
        }
        if fusedLayers[layer] == nil {
            var evict = false
            if case .evict = settings.keys { evict = true }
            var nearest = compressed.reconstructor == .nearest
            if case .nearest = settings.keys { nearest = true }
            fusedLayers[layer] = compressed.heads.enumerated().map { h, head in
                let key = FusedSpanLayout.Key(retained: head.neighbours.retained, nearest: nearest, evict: evict)
                let layout = fusedLayoutCache[key] ?? FusedSpanLayout(neighbours: head.neighbours, positions: capsule.positions,
                                                                     nearest: nearest, evict: evict, rope: rope)
                fusedLayoutCache[key] = layout
                return FusedSpanHead(layout: layout, coefficients: layout.coefficients(keys: settings.keys, nearest: nearest,
                                                                                      layer: layer, head: h, headDim: headDim),
                                     headDim: headDim)
            }
        }
        let heads = fusedLayers[layer]!
        // Text entries: the positions compressed around the span, then this call's new ones (already appended).
        let textPositionList = storePositions[layer]
        let textCount = textPositionList.count
        let visible = (0..<t).map { i in textPositionList.prefix { Int($0) <= firstPosition + i }.count }
        let work = FusedHeadWork(layer: layer, rows: t, group: headCount / kvHeadCount, headDim: headDim,
                                 rowStride: headCount * headDim, textCount: textCount, visible: visible, heads: heads,
                                 compressed: compressed, tokens: capsule.positions.count)
        return stores[layer].withLayer(0) { view -> Bool in
            guard case .float16(let textKeys, let textValues) = view.storage else { return false }
            let perform: (Int) -> Void = { h in
                work.run(head: h, queries: queries, textKeys: textKeys + h * view.headStride,
                         textValues: textValues + h * view.headStride, output: output)
            }
            let entries = textCount + heads[0].layout.retainedSpan.count + 4 * heads[0].layout.droppedCount
            if threads > 1 && t * entries * headCount * headDim > 200_000 {
                // The backbone's spinning pool, not GCD: waking GCD workers every layer costs more than a head's work.
                DecodeThreadPool.shared(threads: threads).run(chunks: kvHeadCount, perform)
            } else {
                for h in 0..<kvHeadCount { perform(h) }
            }
            return true
        }
    }
}

/// The arithmetic of one layer's fused attention, one KV head (and its group of query heads) at a time.
private struct FusedHeadWork {
    let layer: Int
    let rows: Int
    let group: Int
    let headDim: Int
    let rowStride: Int
    let textCount: Int
    let visible: [Int]
    let heads: [FusedSpanHead]
    let compressed: CapsuleCache.LayerCapsule
    let tokens: Int

    func run(head h: Int, queries: UnsafePointer<Float>, textKeys: UnsafePointer<Float16>,
             textValues: UnsafePointer<Float16>, output: UnsafeMutablePointer<Float>) {
        let d = headDim, g = group, pairs = d / 2, layout = heads[h].layout
        let stored = compressed.heads[h].retainedKeys
        let retained = layout.retainedSpan.count, dropped = layout.droppedCount, n = tokens
        let entries = textCount + retained + dropped
        let scale = 1 / Float(d).squareRoot()
        let maxSlots = layout.groups.map(\.slots).max() ?? 0
        // Column scales of int8 keys fold into the queries: q·(s ⊙ k8) = (q ⊙ s)·k8.
        let columnScale: [Float]? = stored.precision == .int8 ? HalfConversion.halfToFloat(stored.scales) : nil

        let rank = compressed.heads[h].values?.rank
        let scratch = Scratch(
            u: maxSlots * g * d, q: g * d, scores: rows * g * entries, span: rows * g * n,
            values: rank.map { n * $0 + $0 * d + rows * g * $0 + d } ?? n * d, vision: rows * g * d)
        defer { scratch.free() }
        let weightOffsets = heads[h].weightOffsets

        heads[h].queryWeights.withUnsafeBufferPointer { queryWeights in
            for i in 0..<rows {
                let q = queries + i * rowStride + h * g * d
                let scores = scratch.scores + i * g * entries
                // Text keys (float16, exact).
                if g == 3 {
                    kvc_half_scores_group3(halfBits(textKeys), textCount, d, q, scale, scores, entries)
                } else {
                    FusedKernels.score(HalfRows(base: textKeys), count: textCount, slots: 1, neighbours: nil, queries: q,
                                       group: g, headDim: d, scale: scale, into: scores, stride: entries)
                }
                // Retained keys, in their stored form.
                let qr = scaledQueries(q, columnScale, into: scratch.q)
                scoreStored(stored, count: retained, slots: 1, neighbours: nil, queries: qr, into: scores + textCount,
                            stride: entries)
                // Dropped keys: transformed queries per group and slot, then a few dot products with retained keys each.
                let firstDropped = textCount + retained
                if stored.precision == .int8 && g == 3 {
                    // One C call for all groups: under score-based retention most groups have a single member, so
                    // building their queries, and a Swift loop's retains of each group's arrays, were most of the work.
                    if !layout.groups.isEmpty {
                        stored.int8.withUnsafeBufferPointer { keys in
                            columnScale!.withUnsafeBufferPointer { s in
                                layout.groupMembers.withUnsafeBufferPointer { members in
                                    layout.groupSlots.withUnsafeBufferPointer { slots in
                                        layout.groupNeighbours.withUnsafeBufferPointer { nbs in
                                            kvc_int8_rebuilt_scores_groups3(keys.baseAddress!, d, layout.groups.count,
                                                                            members.baseAddress!, slots.baseAddress!,
                                                                            nbs.baseAddress, q, queryWeights.baseAddress!,
                                                                            s.baseAddress, scale, scores + firstDropped, entries)
                                        }
                                    }
                                }
                            }
                        }
                    }
                } else {
                    var column = firstDropped
                    for (c, grp) in layout.groups.enumerated() {
                        for m in 0..<grp.slots {
                            let w = queryWeights.baseAddress! + weightOffsets[c] + m * d
                            for k in 0..<g {
                                let src = q + k * d, u = scratch.u + (m * g + k) * d
                                for p in 0..<pairs {
                                    let qr = src[2 * p], qi = src[2 * p + 1], wr = w[2 * p], wi = w[2 * p + 1]
                                    u[2 * p] = qr * wr + qi * wi
                                    u[2 * p + 1] = qi * wr - qr * wi
                                }
                                if let s = columnScale { for e in 0..<d { u[e] *= s[e] } }
                            }
                        }
                        let out = scores + column
                        grp.neighbours.withUnsafeBufferPointer { nbs in
                            scoreStored(stored, count: grp.members.count, slots: grp.slots, neighbours: nbs.baseAddress,
                                        queries: scratch.u, into: out, stride: entries)
                        }
                        column += grp.members.count
                    }
                }
                // Causal mask over the text entries, then one softmax over text and vision together.
                for k in 0..<g {
                    let row = scores + k * entries
                    for j in visible[i]..<textCount { row[j] = -.infinity }
                    kvc_softmax(row, entries)
                }
            }
        }

        // Values. Text: weighted sum of the float16 rows, straight into the output.
        for i in 0..<rows {
            let out = output + i * rowStride + h * g * d
            out.update(repeating: 0, count: g * d)
            kvc_half_accumulate(halfBits(textValues), d, textCount, scratch.scores + i * g * entries, entries, g, out)
        }
        // Vision: p·V̂ = (p·C)·B + (Σp)·μ for all rows and heads at once.
        let m = rows * g, visionEntries = retained + dropped
        let visionProbabilities = scratch.scores + textCount   // row r starts at r * entries
        // The probabilities in span order (evicted tokens 0), for the paths that multiply whole factor matrices.
        func scatterToSpan() {
            scratch.span.update(repeating: 0, count: m * n)
            for r in 0..<m {
                let p = visionProbabilities + r * entries, span = scratch.span + r * n
                for (k, j) in layout.visionOrder.enumerated() { span[Int(j)] = p[k] }
            }
        }
        let vision = scratch.vision
        if let q = rank {
            // Factors widened into scratch (no allocation per step): C [n, q], B [q, d], then y = P·C [m, q], mean [d].
            let factors = compressed.heads[h].values!
            let coefficients = factors.coefficients, basis = factors.basis
            let c = scratch.values, b = c + n * q, y = b + q * d, mean = y + m * q
            factors.mean.withUnsafeBufferPointer { HalfConversion.halfToFloat($0.baseAddress!, mean, count: d) }
            for r in 0..<m {
                var total: Float = 0
                let p = visionProbabilities + r * entries
                for j in 0..<visionEntries { total += p[j] }
                for e in 0..<d { vision[r * d + e] = total * mean[e] }
            }
            let int8Coefficients = coefficients.precision == .int8
            if q > 0 && (int8Coefficients || q % 8 == 0) && !coefficients.scalePerRow
                && (basis.scalePerRow || basis.scales.isEmpty) {
                // Straight from the stored factors: y = P·C, the scales of C's columns and B's rows folded into y,
                // then vision += y·B. Int8 coefficients are read in attention order at any rank; float16 ones take
                // whole SIMD chunks over the span.
                y.update(repeating: 0, count: m * q)
                if int8Coefficients {
                    coefficients.int8.withUnsafeBufferPointer { rowsC in
                        layout.visionOrder.withUnsafeBufferPointer { order in
                            kvc_int8_gather_accumulate(rowsC.baseAddress!, q, order.baseAddress!, visionEntries,
                                                       visionProbabilities, entries, m, y)
                        }
                    }
                } else {
                    scatterToSpan()
                    Self.withRows(coefficients) {
                        FusedKernels.accumulate($0, count: n, probabilities: scratch.span, stride: n, group: m, headDim: q, into: y)
                    }
                }
                let sC = coefficients.scales, sB = basis.scales
                if !sC.isEmpty || !sB.isEmpty {
                    for k in 0..<q {
                        let scale = (sC.isEmpty ? 1 : Float(Float16(bitPattern: sC[k])))
                            * (sB.isEmpty ? 1 : Float(Float16(bitPattern: sB[k])))
                        for r in 0..<m { y[r * q + k] *= scale }
                    }
                }
                switch basis.precision {
                case .int8: kvc_int8_gather_accumulate(basis.int8, d, nil, q, y, q, m, vision)
                case .float16: kvc_half_accumulate(basis.halves, d, q, y, q, m, vision)
                }
            } else if q > 0 {
                scatterToSpan()
                coefficients.widen(into: c)
                basis.widen(into: b)
                BLAS.gemm(m: m, n: q, k: n, a: scratch.span, b: c, c: y)
                BLAS.gemm(m: m, n: d, k: q, a: y, b: b, beta: 1, c: vision)
            }
        } else {
            scatterToSpan()
            compressed.heads[h].rawValues.withUnsafeBufferPointer { HalfConversion.halfToFloat($0.baseAddress!, scratch.values, count: n * d) }
            BLAS.gemm(m: m, n: d, k: n, a: scratch.span, b: scratch.values, c: vision)
        }
        for i in 0..<rows {
            let out = output + i * rowStride + h * g * d
            for e in 0..<(g * d) { out[e] += vision[i * g * d + e] }
        }
    }

    /// Float16 rows as the bit patterns the C kernels take.
    private func halfBits(_ rows: UnsafePointer<Float16>) -> UnsafePointer<UInt16> {
        UnsafeRawPointer(rows).assumingMemoryBound(to: UInt16.self)
    }

    /// Calls `body` with the rows of `stored` in its element type (int8 rows without their scales).
    @inline(__always)
    private static func withRows(_ stored: StoredMatrix, _ body: (FusedStoredRows) -> Void) {
        switch stored.precision {
        case .float16:
            stored.halves.withUnsafeBufferPointer { p in
                UnsafeRawPointer(p.baseAddress!).withMemoryRebound(to: Float16.self, capacity: p.count) { body(.half(HalfRows(base: $0))) }
            }
        case .int8:
            stored.int8.withUnsafeBufferPointer { body(.int8(Int8Rows(base: $0.baseAddress!))) }
        }
    }

    /// `FusedKernels.score` over the retained keys in their stored element type.
    private func scoreStored(_ stored: StoredMatrix, count: Int, slots: Int, neighbours: UnsafePointer<Int32>?,
                             queries: UnsafePointer<Float>, into scores: UnsafeMutablePointer<Float>, stride: Int) {
        let scale = 1 / Float(headDim).squareRoot()
        switch stored.precision {
        case .float16:
            stored.halves.withUnsafeBufferPointer { p in
                UnsafeRawPointer(p.baseAddress!).withMemoryRebound(to: Float16.self, capacity: p.count) {
                    FusedKernels.score(HalfRows(base: $0), count: count, slots: slots, neighbours: neighbours,
                                       queries: queries, group: group, headDim: headDim, scale: scale, into: scores,
                                       stride: stride)
                }
            }
        case .int8 where group == 3:
            stored.int8.withUnsafeBufferPointer { p in
                kvc_int8_scores_group3(p.baseAddress!, count, headDim, slots, neighbours, queries, scale, scores, stride)
            }
        case .int8:
            stored.int8.withUnsafeBufferPointer { p in
                FusedKernels.score(Int8Rows(base: p.baseAddress!), count: count, slots: slots, neighbours: neighbours,
                                   queries: queries, group: group, headDim: headDim, scale: scale, into: scores,
                                   stride: stride)
            }
        }
    }

    /// `q ⊙ s` for every query head of the group when keys carry column scales, else `q` itself.
    private func scaledQueries(_ q: UnsafePointer<Float>, _ s: [Float]?, into buffer: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        guard let s else { return q }
        for k in 0..<group { for e in 0..<headDim { buffer[k * headDim + e] = q[k * headDim + e] * s[e] } }
        return UnsafePointer(buffer)
    }

    /// One allocation for the per-head buffers.
    private struct Scratch {
        let base: UnsafeMutablePointer<Float>
        let u, q, scores, span, values, vision: UnsafeMutablePointer<Float>
        init(u: Int, q: Int, scores: Int, span: Int, values: Int, vision: Int) {
            base = .allocate(capacity: u + q + scores + span + values + vision + 1)
            self.u = base
            self.q = self.u + u
            self.scores = self.q + q
            self.span = self.scores + scores
            self.values = self.span + span
            self.vision = self.values + values
        }
        func free() { base.deallocate() }
    }
}

/// Rows of keys or values in a stored form, widened to float32 eight elements at a time.
protocol FusedRows {
    func load8(_ offset: Int) -> SIMD8<Float>
}

struct HalfRows: FusedRows {
    let base: UnsafePointer<Float16>
    @inline(__always) func load8(_ offset: Int) -> SIMD8<Float> {
        SIMD8<Float>(UnsafeRawPointer(base + offset).loadUnaligned(as: SIMD8<Float16>.self))
    }
}

struct Int8Rows: FusedRows {
    let base: UnsafePointer<Int8>
    @inline(__always) func load8(_ offset: Int) -> SIMD8<Float> {
#if arch(x86_64)
        // One sign-extending widen and one conversion (the generic SIMD conversions go lane by lane).
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(UnsafeRawPointer(base + offset).assumingMemoryBound(to: __m128i.self))))
#else
        SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: UnsafeRawPointer(base + offset).loadUnaligned(as: SIMD8<Int8>.self)))
#endif
    }
}

extension StoredMatrix {
    /// The float32 matrix into `out` (`[rows, cols]`), in loops the compiler vectorizes (this runs every step for the
    /// value factors).
    func widen(into out: UnsafeMutablePointer<Float>) {
        switch precision {
        case .float16:
            halves.withUnsafeBufferPointer { HalfConversion.halfToFloat($0.baseAddress!, out, count: rows * cols) }
        case .int8:
            let scale = UnsafeMutablePointer<Float>.allocate(capacity: max(scales.count, 1))
            defer { scale.deallocate() }
            scales.withUnsafeBufferPointer { HalfConversion.halfToFloat($0.baseAddress!, scale, count: scales.count) }
            int8.withUnsafeBufferPointer { q in
                let q = q.baseAddress!
                for i in 0..<rows {
                    let row = q + i * cols, o = out + i * cols
                    if scalePerRow {
                        let s = scale[i]
                        for j in 0..<cols { o[j] = Float(row[j]) * s }
                    } else {
                        for j in 0..<cols { o[j] = Float(row[j]) * scale[j] }
                    }
                }
            }
        }
    }
}

/// Stored rows of either element type, for loops that take both.
enum FusedStoredRows {
    case half(HalfRows)
    case int8(Int8Rows)
}

/// The inner loops of the fused path.
enum FusedKernels {
    /// `accumulate` over rows of either stored element type.
    static func accumulate(_ rows: FusedStoredRows, count: Int, probabilities p: UnsafePointer<Float>, stride: Int,
                           group: Int, headDim d: Int, into out: UnsafeMutablePointer<Float>) {
        switch rows {
        case .half(let r): accumulate(r, count: count, probabilities: p, stride: stride, group: group, headDim: d, into: out)
        case .int8(let r): accumulate(r, count: count, probabilities: p, stride: stride, group: group, headDim: d, into: out)
        }
    }

    /// `scores[k * stride + j] = scale · Σ_m u[m][k] · row(neighbours[j * slots + m])` for j in 0..<count and query head
    /// k of the group (`neighbours == nil`: row j, one slot). `queries` is `[slots][group][headDim]`.
    @inline(__always)
    static func score<Rows: FusedRows>(_ rows: Rows, count: Int, slots: Int, neighbours: UnsafePointer<Int32>?,
                                       queries u: UnsafePointer<Float>, group: Int, headDim d: Int, scale: Float,
                                       into scores: UnsafeMutablePointer<Float>, stride: Int) {
        let chunks = d / 8
        @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
            UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
        }
        @inline(__always) func row(_ j: Int, _ m: Int) -> Int { (neighbours.map { Int($0[j * slots + m]) } ?? j) * d }
        if group == 3 {
            // Each key chunk is widened once for the three query heads.
            for j in 0..<count {
                var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
                for m in 0..<slots {
                    let base = row(j, m), q = u + m * 3 * d
                    for c in 0..<chunks {
                        let k = rows.load8(base + 8 * c)
                        a0.addProduct(k, load(q + 8 * c))
                        a1.addProduct(k, load(q + d + 8 * c))
                        a2.addProduct(k, load(q + 2 * d + 8 * c))
                    }
                }
                scores[j] = a0.sum() * scale
                scores[stride + j] = a1.sum() * scale
                scores[2 * stride + j] = a2.sum() * scale
            }
            return
        }
        for j in 0..<count {
            for k in 0..<group {
                var acc = SIMD8<Float>()
                for m in 0..<slots {
                    let base = row(j, m), q = u + (m * group + k) * d
                    for c in 0..<chunks { acc.addProduct(rows.load8(base + 8 * c), load(q + 8 * c)) }
                }
                scores[k * stride + j] = acc.sum() * scale
            }
        }
    }

    /// `out[k][:] += Σ_j p[k * stride + j] · row(j)` for `group` probability rows (query heads, or rows of a product),
    /// rows of `headDim` elements (a multiple of 8).
    @inline(__always)
    static func accumulate<Rows: FusedRows>(_ rows: Rows, count: Int, probabilities p: UnsafePointer<Float>, stride: Int,
                                            group: Int, headDim d: Int, into out: UnsafeMutablePointer<Float>) {
        for j in 0..<count {
            for c in 0..<(d / 8) {
                let v = rows.load8(j * d + 8 * c)
                for k in 0..<group {
                    let o = UnsafeMutableRawPointer(out + k * d + 8 * c)
                    o.storeBytes(of: o.loadUnaligned(as: SIMD8<Float>.self) + p[k * stride + j] * v, as: SIMD8<Float>.self)
                }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
