import Foundation
import KVCBackbone
import KVCCore
import KVCGGUF

/// Builds the backbone's `LlamaModel` from Hugging Face Llama weights by converting them, in memory, to the GGUF
/// layout llama.cpp's `convert_hf_to_gguf.py` writes — so the HF model runs through exactly the decoder, caches and
/// kernels the rest of the toolkit uses, and every cached key is in the same RoPE layout as with a GGUF backbone.
///
/// The one non-trivial step is the rotary layout: Hugging Face rotates the pairs `(i, i + d/2)` of each head
/// ("rotate_half"), GGUF the adjacent pairs `(2i, 2i + 1)`. Like llama.cpp (`LlamaModel.permute`), the rows of
/// `q_proj` and `k_proj` are reordered per head so that GGUF row `2i + s` is HF row `s·d/2 + i`; attention scores are
/// unchanged, and a key computed here is the HF key with its elements reordered the same way (`HFRotaryLayout`).
///
/// Matrices keep their stored dtype, except BF16 ones (how SmolVLM ships), which become F16 when every value is within
/// F16's range: decoding then streams 2 bytes a weight through the half-precision kernel instead of float32 rows
/// (4 bytes). F16 has BF16's 8 significant bits and more, so only values below F16's normal range (|x| < 6.1e-5)
/// change, by less than 3e-8 each (subnormal rounding). F32 stays F32.
public enum HFLlamaConversion {
    /// The GGUF of the decoder whose tensors are named `prefix + "layers.0.self_attn.q_proj.weight"` etc.
    /// (`"model."` for `LlamaForCausalLM`, `"model.text_model."` for Idefics3), with the output head `lm_head.weight`
    /// or, when the checkpoint has none and `config.tiedEmbeddings`, the token embedding; with `tokenizer`, its
    /// `tokenizer.ggml.*` metadata too, so `Backbone(file:)` can encode and generate. `LlamaModel(file:)` loads it.
    /// - Throws: `KVCError` naming the file and tensor that is missing or has the wrong shape or dtype.
    public static func convert(checkpoint: HFCheckpoint, config: HFLlamaConfig, prefix: String,
                               tokenizer: HFTokenizerJSON? = nil) throws -> GGUFFile {
        let bytes = try ggufImage(checkpoint: checkpoint, config: config, prefix: prefix, tokenizer: tokenizer)
        return try GGUFFile(bytes: bytes, name: checkpoint.directory + " (converted to GGUF in memory)")
    }

    /// The GGUF file image (metadata `llama.*`, optionally `tokenizer.ggml.*`, and the tensors in ggml names).
    public static func ggufImage(checkpoint: HFCheckpoint, config: HFLlamaConfig, prefix: String,
                                 tokenizer: HFTokenizerJSON? = nil) throws -> [UInt8] {
        let c = config.llama
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .uint32(UInt32(c.layerCount)))
        w.set("llama.embedding_length", .uint32(UInt32(c.hiddenSize)))
        w.set("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize)))
        w.set("llama.attention.head_count", .uint32(UInt32(c.headCount)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(c.kvHeadCount)))
        w.set("llama.context_length", .uint32(UInt32(c.contextLength)))
        w.set("llama.rope.freq_base", .float32(Float(c.ropeBase)))
        w.set("llama.rope.dimension_count", .uint32(UInt32(c.headDim)))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(c.rmsNormEpsilon))
        w.set("llama.vocab_size", .uint32(UInt32(c.vocabularySize)))
        tokenizer?.addMetadata(to: &w)

        func add(_ ggufName: String, _ hfName: String, shape: [Int], permuteHeads: Int? = nil) throws {
            let (file, info) = try checkpoint.checkedInfo(hfName, shape: shape)
            var data = try file.withRawBytes(hfName) { Array($0) }
            if let heads = permuteHeads {
                data = HFRotaryLayout.permuteRowsToGGUF(data, heads: heads, rowBytes: shape[1] * info.dtype.byteSize)
            }
            var type: GGMLType = info.dtype == .f16 ? .f16 : info.dtype == .bf16 ? .bf16 : .f32
            if type == .bf16, shape.count == 2, let half = Self.bfloat16AsHalf(data) { (type, data) = (.f16, half) }
            w.addTensor(ggufName, type: type, dims: shape.reversed(), data: data)
        }
        let h = c.hiddenSize
        try add("token_embd.weight", prefix + "embed_tokens.weight", shape: [c.vocabularySize, h])
        if checkpoint.contains("lm_head.weight") || !config.tiedEmbeddings {
            try add("output.weight", "lm_head.weight", shape: [c.vocabularySize, h])
        }
        try add("output_norm.weight", prefix + "norm.weight", shape: [h])
        for i in 0..<c.layerCount {
            let hf = prefix + "layers.\(i).", blk = "blk.\(i)."
            try add(blk + "attn_norm.weight", hf + "input_layernorm.weight", shape: [h])
            try add(blk + "attn_q.weight", hf + "self_attn.q_proj.weight", shape: [c.queryDim, h], permuteHeads: c.headCount)
            try add(blk + "attn_k.weight", hf + "self_attn.k_proj.weight", shape: [c.kvDim, h], permuteHeads: c.kvHeadCount)
            try add(blk + "attn_v.weight", hf + "self_attn.v_proj.weight", shape: [c.kvDim, h])
            try add(blk + "attn_output.weight", hf + "self_attn.o_proj.weight", shape: [h, c.queryDim])
            try add(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", shape: [h])
            try add(blk + "ffn_gate.weight", hf + "mlp.gate_proj.weight", shape: [c.intermediateSize, h])
            try add(blk + "ffn_up.weight", hf + "mlp.up_proj.weight", shape: [c.intermediateSize, h])
            try add(blk + "ffn_down.weight", hf + "mlp.down_proj.weight", shape: [h, c.intermediateSize])
        }
        return w.serialize()
    }

    /// BF16 data as F16 bytes, or nil when a value is beyond F16's range (then BF16 stays).
    static func bfloat16AsHalf(_ data: [UInt8]) -> [UInt8]? {
        let n = data.count / 2
        var floats = [Float](repeating: 0, count: n)
        data.withUnsafeBytes { raw in
            for i in 0..<n { floats[i] = Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
        }
        guard floats.allSatisfy({ abs($0) <= Float(Float16.greatestFiniteMagnitude) }) else { return nil }
        return HalfConversion.floatToHalf(floats).withUnsafeBytes { Array($0) }
    }
}
