import Foundation
import KVCCore
import KVCGGUF
@testable import KVCBackbone

/// Tiny Llama GGUF files written in the test, for fast checks of shapes, kernels and bad input.
enum SyntheticModel {
    struct Shape {
        var layers = 2, hidden = 64, ffn = 96, heads = 4, kvHeads = 2, vocab = 40, context = 32
    }

    /// Block bytes of `rows` x `cols` weights in `type`, with random quants and small positive scales.
    static func randomTensorBytes(_ type: GGMLType, rows: Int, cols: Int, rng: inout SeededRandom) -> [UInt8] {
        let blocks = rows * cols / type.blockSize
        var out = [UInt8]()
        out.reserveCapacity(blocks * type.bytesPerBlock)
        func half(_ x: Float) -> [UInt8] { withUnsafeBytes(of: Float16(x).bitPattern.littleEndian) { Array($0) } }
        func randomByte() -> UInt8 { UInt8(truncatingIfNeeded: rng.next()) }
        switch type {
        case .f32:
            for _ in 0..<(rows * cols) { out += withUnsafeBytes(of: (rng.nextNormal() * 0.1).bitPattern.littleEndian) { Array($0) } }
        case .f16:
            for _ in 0..<(rows * cols) { out += half(rng.nextNormal() * 0.1) }
        case .q8_0:
            for _ in 0..<blocks { out += half(0.002 + 0.002 * rng.nextUniform()); for _ in 0..<32 { out.append(randomByte()) } }
        case .q4_0:
            for _ in 0..<blocks { out += half(0.01 + 0.01 * rng.nextUniform()); for _ in 0..<16 { out.append(randomByte()) } }
        case .q4_1:
            for _ in 0..<blocks {
                out += half(0.01 + 0.01 * rng.nextUniform()); out += half(-0.08 + 0.01 * rng.nextNormal())
                for _ in 0..<16 { out.append(randomByte()) }
            }
        default:
            preconditionFailure("no random generator for \(type.name)")
        }
        return out
    }

    /// A complete tiny model; `omit` drops a tensor, `reshape` replaces a tensor's dims (data resized to fit).
    static func write(_ shape: Shape = Shape(), matrixType: GGMLType = .q4_1, seed: UInt64 = 1,
                      omit: String? = nil, reshape: (name: String, dims: [Int])? = nil) throws -> String {
        var rng = SeededRandom(seed: seed)
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .uint32(UInt32(shape.layers)))
        w.set("llama.context_length", .uint32(UInt32(shape.context)))
        w.set("llama.embedding_length", .uint32(UInt32(shape.hidden)))
        w.set("llama.feed_forward_length", .uint32(UInt32(shape.ffn)))
        w.set("llama.attention.head_count", .uint32(UInt32(shape.heads)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(shape.kvHeads)))
        w.set("llama.rope.freq_base", .float32(10_000))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
        w.set("llama.vocab_size", .uint32(UInt32(shape.vocab)))
        let headDim = shape.hidden / shape.heads
        func matrix(_ name: String, rows: Int, cols: Int, type: GGMLType) {
            guard name != omit else { return }
            var dims = [cols, rows]
            if let reshape, reshape.name == name { dims = reshape.dims }
            let n = dims.reduce(1, *)
            let t: GGMLType = dims[0] % 32 == 0 ? type : .f32
            w.addTensor(name, type: t, dims: dims, data: randomTensorBytes(t, rows: n / dims[0], cols: dims[0], rng: &rng))
        }
        func vector(_ name: String, _ n: Int) {
            guard name != omit else { return }
            var dims = [n]
            if let reshape, reshape.name == name { dims = reshape.dims }
            w.addTensor(name, dims: dims, floats: (0..<dims.reduce(1, *)).map { _ in 1 + 0.1 * rng.nextNormal() })
        }
        matrix("token_embd.weight", rows: shape.vocab, cols: shape.hidden, type: .q8_0)
        vector("output_norm.weight", shape.hidden)
        for l in 0..<shape.layers {
            let p = "blk.\(l)."
            vector(p + "attn_norm.weight", shape.hidden)
            vector(p + "ffn_norm.weight", shape.hidden)
            matrix(p + "attn_q.weight", rows: shape.heads * headDim, cols: shape.hidden, type: matrixType)
            matrix(p + "attn_k.weight", rows: shape.kvHeads * headDim, cols: shape.hidden, type: matrixType)
            matrix(p + "attn_v.weight", rows: shape.kvHeads * headDim, cols: shape.hidden, type: matrixType)
            matrix(p + "attn_output.weight", rows: shape.hidden, cols: shape.heads * headDim, type: matrixType)
            matrix(p + "ffn_gate.weight", rows: shape.ffn, cols: shape.hidden, type: matrixType)
            matrix(p + "ffn_up.weight", rows: shape.ffn, cols: shape.hidden, type: matrixType)
            matrix(p + "ffn_down.weight", rows: shape.hidden, cols: shape.ffn, type: matrixType)
        }
        let path = NSTemporaryDirectory() + "kvc-llama-\(UUID().uuidString).gguf"
        try w.write(to: path)
        return path
    }
}
