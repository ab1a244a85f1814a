import Foundation
import KVCBackbone
import KVCCore

/// Attention each cache entry receives from prefill queries, per layer: for every query head and every chosen query
/// row, the softmax over the entries it sees (causal), summed. What H2O (all queries) and SnapKV (an observation
/// window of the last queries) rank tokens by.
///
/// The decoder shows a layer's queries before it appends that layer's keys, so `observe` keeps the chosen rows and
/// `score` runs once the keys are in the cache.
final class PrefillAttentionScores {
    let scoring: AttentionScoring
    let headCount: Int
    let headDim: Int
    /// Per layer, indexed by entry (position order of the store at scoring time).
    private(set) var scores: [[Float]]
    private var pending: [Int: (rows: [Float], count: Int, firstPosition: Int)] = [:]

    init(scoring: AttentionScoring, layerCount: Int, headCount: Int, headDim: Int) {
        self.scoring = scoring
        self.headCount = headCount
        self.headDim = headDim
        scores = [[Float]](repeating: [], count: layerCount)
    }

    /// Keeps the rows `scoring` chooses of one layer's queries (`[count][headCount * headDim]`, post-RoPE).
    func observe(layer: Int, queries: UnsafePointer<Float>, count: Int, firstPosition: Int) {
        let chosen: Int
        switch scoring {
        case .accumulated: chosen = count
        case .window(let n): chosen = min(n, count)
        }
        let width = headCount * headDim, skip = count - chosen
        pending[layer] = (Array(UnsafeBufferPointer(start: queries + skip * width, count: chosen * width)), chosen,
                          firstPosition + skip)
    }

    /// Adds the attention of the queries kept for `layer` over `view` (which must now hold their keys).
    func score(layer: Int, view: KVLayerView, kvHeadCount: Int) {
        guard let p = pending.removeValue(forKey: layer) else { return }
        let d = headDim, n = view.count, r = p.count, group = headCount / kvHeadCount
        let scale = 1 / Float(d).squareRoot()
        var received = scores[layer]
        scores[layer] = []
        if received.count < n { received += [Float](repeating: 0, count: n - received.count) }
        defer { scores[layer] = received }
        // Entries each row sees: those at positions <= the row's position.
        var visible = [Int](repeating: 0, count: r)
        var j = 0
        for i in 0..<r {
            while j < n && view.position(j) <= p.firstPosition + i { j += 1 }
            visible[i] = j
        }
        var keys = [Float](repeating: 0, count: n * d)
        var logits = [Float](repeating: 0, count: r * n)
        for kvh in 0..<kvHeadCount {
            let base = kvh * view.headStride
            keys.withUnsafeMutableBufferPointer { k in
                switch view.storage {
                case .float16(let src, _):
                    for e in 0..<(n * d) { k[e] = Float(src[base + e]) }
                case .float32(let src, _):
                    k.baseAddress!.update(from: src + base, count: n * d)
                }
            }
            for g in 0..<group {
                let head = kvh * group + g
                p.rows.withUnsafeBufferPointer { q in
                    keys.withUnsafeBufferPointer { k in
                        logits.withUnsafeMutableBufferPointer { s in
                            BLAS.gemm(transB: true, m: r, n: n, k: d, alpha: scale, a: q.baseAddress! + head * d,
                                      lda: headCount * d, b: k.baseAddress!, ldb: d, c: s.baseAddress!)
                        }
                    }
                }
                for i in 0..<r {
                    let row = i * n, seen = visible[i]
                    guard seen > 0 else { continue }
                    var peak = -Float.infinity
                    for e in 0..<seen { peak = max(peak, logits[row + e]) }
                    var total: Float = 0
                    for e in 0..<seen {
                        let w = expf(logits[row + e] - peak)
                        logits[row + e] = w
                        total += w
                    }
                    let inv = 1 / total
                    for e in 0..<seen { received[e] += logits[row + e] * inv }
                }
            }
        }
    }
}
