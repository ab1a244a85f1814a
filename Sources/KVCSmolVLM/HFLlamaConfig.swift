import KVCBackbone
import KVCCore

/// A Llama decoder's hyper-parameters as transformers writes them (`LlamaForCausalLM`'s `config.json`, or the
/// `text_config` of an Idefics3 model), mapped onto the backbone's `LlamaConfig`.
///
/// Absent keys take transformers' `LlamaConfig` defaults. Both config generations load: transformers 4.x writes
/// `rope_theta` (and `rope_scaling`) at the top of the object, 5.x writes `rope_parameters: {rope_type, rope_theta}`.
/// Features the backbone's decoder does not implement (biases, rotary scaling, partial rotary, another activation, a
/// head size other than hidden/heads) are refused with the field named, rather than run wrongly.
public struct HFLlamaConfig: Equatable, Sendable {
    public var llama: LlamaConfig
    /// The output head is the token embedding (no `lm_head.weight` in the checkpoint).
    public var tiedEmbeddings: Bool

    /// - Parameter defaultRMSNormEpsilon: transformers' default differs by parent (1e-6 for Llama, 1e-5 inside Idefics3
    ///   when the whole text config is absent).
    init(_ fields: JSONFields, tiedDefault: Bool = false, defaultRMSNormEpsilon: Double = 1e-6) throws {
        let modelType = try fields.string("model_type", default: "llama")
        guard modelType == "llama" else {
            throw fields.error("model_type", "is '\(modelType)'; only 'llama' text models are supported")
        }
        let hidden = try fields.int("hidden_size", default: 4096)
        let heads = try fields.int("num_attention_heads", default: 32)
        let kvHeads = try fields.int("num_key_value_heads", default: heads)
        guard heads > 0, hidden % heads == 0 else {
            throw fields.error("num_attention_heads", "= \(heads) must divide hidden_size \(hidden)")
        }
        if fields.has("head_dim") {
            let headDim = try fields.int("head_dim")
            guard headDim == hidden / heads else {
                throw fields.error("head_dim", "is \(headDim); only hidden_size / num_attention_heads (\(hidden / heads)) is supported")
            }
        }
        let activation = try fields.string("hidden_act", default: "silu")
        guard activation == "silu" else { throw fields.error("hidden_act", "is '\(activation)'; only 'silu' is supported") }
        for key in ["attention_bias", "mlp_bias"] where try fields.bool(key, default: false) {
            throw fields.error(key, "is true; the decoder has no biases")
        }
        let ropeBase = try Self.ropeTheta(fields)
        llama = LlamaConfig(layerCount: try fields.int("num_hidden_layers", default: 32), hiddenSize: hidden,
                            intermediateSize: try fields.int("intermediate_size", default: 11008), headCount: heads,
                            kvHeadCount: kvHeads, headDim: hidden / heads, vocabularySize: try fields.int("vocab_size", default: 32000),
                            contextLength: try fields.int("max_position_embeddings", default: 2048), ropeBase: ropeBase,
                            rmsNormEpsilon: Float(try fields.double("rms_norm_eps", default: defaultRMSNormEpsilon)))
        tiedEmbeddings = try fields.bool("tie_word_embeddings", default: tiedDefault)
        try llama.validate(path: fields.path)
    }

    /// `rope_parameters.rope_theta` (5.x) or `rope_theta` (4.x), default 10000; only the unscaled ("default") rotary
    /// embedding is supported.
    private static func ropeTheta(_ fields: JSONFields) throws -> Double {
        var theta = try fields.double("rope_theta", default: 10_000)
        for key in ["rope_parameters", "rope_scaling"] {
            guard let rope = try fields.object(key) else { continue }
            let type = try rope.has("rope_type") ? rope.string("rope_type") : rope.string("type", default: "default")
            guard type == "default" else {
                throw rope.error("rope_type", "is '\(type)'; only the unscaled rotary embedding ('default') is supported")
            }
            if rope.has("rope_theta") { theta = try rope.double("rope_theta") }
            if rope.has("partial_rotary_factor"), try rope.double("partial_rotary_factor") != 1 {
                throw rope.error("partial_rotary_factor", "must be 1 (rotary embedding over the whole head)")
            }
        }
        return theta
    }
}
