import Foundation
import KVCBackbone

/// Attention output of one query over everything a `KVLayerView` holds (grouped-query heads): what the decoder's
/// attention computes for the last position of a forward call, recomputed outside it so that fidelity metrics can
/// compare caches layer by layer.
public enum LastQueryAttention {
    /// `query` is `[headCount * headDim]` (post-RoPE); returns `[headCount * headDim]`.
    public static func output(query: [Float], view: KVLayerView, headCount: Int, kvHeadCount: Int, headDim d: Int) -> [Float] {
        let n = view.count, group = headCount / kvHeadCount, scale = 1 / Float(d).squareRoot()
        var out = [Float](repeating: 0, count: headCount * d)
        var weights = [Float](repeating: 0, count: n)
        func key(_ base: Int, _ e: Int) -> Float {
            switch view.storage {
            case .float16(let k, _): return Float(k[base + e])
            case .float32(let k, _): return k[base + e]
            }
        }
        func value(_ base: Int, _ e: Int) -> Float {
            switch view.storage {
            case .float16(_, let v): return Float(v[base + e])
            case .float32(_, let v): return v[base + e]
            }
        }
        for head in 0..<headCount {
            let base = (head / group) * view.headStride, q = head * d
            var peak = -Float.infinity
            for j in 0..<n {
                var s: Float = 0
                for e in 0..<d { s += query[q + e] * key(base + j * d, e) }
                weights[j] = s * scale
                peak = max(peak, weights[j])
            }
            var total: Float = 0
            for j in 0..<n { weights[j] = expf(weights[j] - peak); total += weights[j] }
            for j in 0..<n {
                let w = weights[j] / total
                for e in 0..<d { out[q + e] += w * value(base + j * d, e) }
            }
        }
        return out
    }
}
