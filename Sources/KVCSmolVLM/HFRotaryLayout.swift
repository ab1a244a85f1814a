/// The two rotary layouts of a head vector and the maps between them.
///
/// Hugging Face Llama rotates the pairs `(i, i + d/2)` of each head ("rotate_half"); GGUF files (and so this toolkit's
/// decoder and caches, see `RotaryEmbedding`) rotate adjacent pairs `(2i, 2i + 1)`. llama.cpp converts by reordering
/// the rows of `q_proj`/`k_proj` per head; a key computed with the reordered weights is the HF key reordered the same
/// way, so parity dumps map it back with `ggufToHF`.
public enum HFRotaryLayout {
    /// Reorders the rows of a `[heads * d, cols]` projection (rows of `rowBytes` bytes) from the Hugging Face layout
    /// to the GGUF one: within each head, GGUF row `2i + s` = HF row `s·d/2 + i`.
    public static func permuteRowsToGGUF(_ data: [UInt8], heads: Int, rowBytes: Int) -> [UInt8] {
        let rows = data.count / rowBytes, d = rows / heads
        var out = [UInt8](repeating: 0, count: data.count)
        data.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                for head in 0..<heads {
                    for i in 0..<d / 2 {
                        for s in 0..<2 {
                            let from = head * d + s * d / 2 + i, to = head * d + 2 * i + s
                            (dst.baseAddress! + to * rowBytes).copyMemory(from: src.baseAddress! + from * rowBytes, byteCount: rowBytes)
                        }
                    }
                }
            }
        }
        return out
    }

    /// A head vector (or consecutive head vectors of `headDim`) in GGUF pair layout, in Hugging Face's layout:
    /// HF element `s·d/2 + i` = GGUF element `2i + s`. What a key computed by the backbone is in transformers' terms.
    public static func ggufToHF(_ v: [Float], headDim d: Int) -> [Float] {
        var out = v
        for base in stride(from: 0, to: v.count, by: d) {
            for i in 0..<d / 2 {
                out[base + i] = v[base + 2 * i]
                out[base + d / 2 + i] = v[base + 2 * i + 1]
            }
        }
        return out
    }
}
