import Foundation

/// Rotary position embedding in the layout of GGUF Llama files.
///
/// **Pair layout.** Hugging Face Llama checkpoints rotate the pairs `(i, i + d/2)` of each head ("rotate_half").
/// llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of `attn_q` and
/// `attn_k` so that, in a GGUF file, the pairs are **adjacent**: `(2i, 2i + 1)`, which is what llama.cpp's
/// `LLAMA_ROPE_TYPE_NORM` applies to the llama architecture. This decoder computes q and k with the GGUF weights
/// as stored, so every query and key vector here — including the keys in the KV cache — is in that permuted
/// layout: element `2i` and `2i + 1` of a head form the i-th complex pair, rotated by angle
/// `position * base^(-2i/d)`. Attention scores are unchanged by the permutation (q and k share it); anything
/// that de-rotates cached keys must use this type, not the Hugging Face pairing.
///
/// Angles are computed in double precision, so rotation is as exact as float32 storage allows at any position.
public struct RotaryEmbedding: Sendable {
    public let headDim: Int
    public let base: Double
    /// Angular frequency of pair i: `base^(-2i/headDim)`.
    public let frequencies: [Double]

    public init(headDim: Int, base: Double) {
        precondition(headDim > 0 && headDim % 2 == 0, "RotaryEmbedding: head dim must be even and positive")
        self.headDim = headDim
        self.base = base
        frequencies = (0..<headDim / 2).map { pow(base, -Double(2 * $0) / Double(headDim)) }
    }

    /// cos and sin of every pair's angle at `position`, interleaved `[cos0, sin0, cos1, sin1, ...]` (headDim floats).
    public func table(position: Int) -> [Float] {
        var t = [Float](repeating: 0, count: headDim)
        t.withUnsafeMutableBufferPointer { fillTable(position: position, into: $0.baseAddress!) }
        return t
    }

    /// Writes `table(position:)` into `out` (headDim floats).
    public func fillTable(position: Int, into out: UnsafeMutablePointer<Float>) {
        for i in 0..<headDim / 2 {
            let angle = Double(position) * frequencies[i]
            out[2 * i] = Float(cos(angle))
            out[2 * i + 1] = Float(sin(angle))
        }
    }

    /// Rotates `heads` consecutive head vectors in place by the angles in `table` (from `fillTable`).
    /// `sign` = 1 rotates, -1 undoes the rotation.
    @inline(__always)
    public func apply(_ v: UnsafeMutablePointer<Float>, heads: Int, table: UnsafePointer<Float>, sign: Float = 1) {
        for h in 0..<heads {
            let x = v + h * headDim
            var i = 0
            while i < headDim {
                let c = table[i], s = sign * table[i + 1]
                let a = x[i], b = x[i + 1]
                x[i] = a * c - b * s
                x[i + 1] = a * s + b * c
                i += 2
            }
        }
    }

    /// Rotates one head vector (headDim floats, GGUF pair layout) to `position`.
    public func rotate(_ vector: [Float], position: Int) -> [Float] { transformed(vector, position: position, sign: 1) }

    /// Undoes `rotate`: maps a cached (post-RoPE) key back to the position-independent frame.
    public func derotate(_ vector: [Float], position: Int) -> [Float] { transformed(vector, position: position, sign: -1) }

    private func transformed(_ vector: [Float], position: Int, sign: Float) -> [Float] {
        precondition(vector.count % headDim == 0, "RotaryEmbedding: \(vector.count) is not a multiple of \(headDim)")
        var out = vector
        let t = table(position: position)
        out.withUnsafeMutableBufferPointer { o in
            t.withUnsafeBufferPointer { apply(o.baseAddress!, heads: vector.count / headDim, table: $0.baseAddress!, sign: sign) }
        }
        return out
    }
}
