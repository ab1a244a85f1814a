import KVCCore

/// The SigLIP vision tower's hyper-parameters (`vision_config` of an Idefics3 `config.json`), with transformers'
/// `Idefics3VisionConfig` defaults for absent keys.
public struct SigLIPVisionConfig: Equatable, Sendable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var channels: Int
    public var imageSize: Int
    public var patchSize: Int
    public var layerNormEpsilon: Float

    public var patchesPerSide: Int { imageSize / patchSize }
    public var patchCount: Int { patchesPerSide * patchesPerSide }
    public var headDim: Int { hiddenSize / headCount }

    init(_ f: JSONFields) throws {
        hiddenSize = try f.int("hidden_size", default: 1152)
        intermediateSize = try f.int("intermediate_size", default: 3072)
        layerCount = try f.int("num_hidden_layers", default: 12)
        headCount = try f.int("num_attention_heads", default: 16)
        channels = try f.int("num_channels", default: 3)
        imageSize = try f.int("image_size", default: 224)
        patchSize = try f.int("patch_size", default: 32)
        layerNormEpsilon = Float(try f.double("layer_norm_eps", default: 1e-6))
        let activation = try f.string("hidden_act", default: "gelu_pytorch_tanh")
        guard activation == "gelu_pytorch_tanh" || activation == "gelu_new" else {
            throw f.error("hidden_act", "is '\(activation)'; only the tanh GELU ('gelu_pytorch_tanh') is supported")
        }
        guard (1...16_384).contains(hiddenSize), (1...65_536).contains(intermediateSize), (1...256).contains(layerCount)
        else { throw f.error("hidden_size", "/ intermediate_size / num_hidden_layers out of range") }
        guard headCount > 0, hiddenSize % headCount == 0 else {
            throw f.error("num_attention_heads", "= \(headCount) must divide hidden_size \(hiddenSize)")
        }
        guard channels == 3 else { throw f.error("num_channels", "is \(channels); only RGB (3) is supported") }
        guard patchSize > 0, imageSize > 0, imageSize % patchSize == 0, imageSize <= 8192 else {
            throw f.error("image_size", "= \(imageSize) must be a positive multiple of patch_size \(patchSize)")
        }
    }
}

/// What a Hugging Face model directory's `config.json` describes: an Idefics3 / SmolVLM vision-language model
/// (`Idefics3ForConditionalGeneration`, or SmolVLM2's `SmolVLMForConditionalGeneration`: the same network, tensor
/// names and outputs under another class name) or a plain Llama decoder (`LlamaForCausalLM`).
public enum HFModelConfig: Equatable, Sendable {
    case idefics3(Idefics3Config)
    case llama(HFLlamaConfig)

    public static let supportedArchitectures = ["Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration",
                                                "LlamaForCausalLM"]

    /// Reads `config.json` and decides by `architectures` (or `model_type` when that list is absent).
    /// - Throws: `KVCError` naming the file and the field for an unsupported architecture or a bad value.
    public static func read(path: String) throws -> HFModelConfig {
        let f = try JSONFields.read(path)
        let modelType = try f.string("model_type", default: "")
        let architecture: String
        if let list = try f.strings("architectures") {
            guard list.count == 1, let only = list.first else {
                throw f.error("architectures", "lists \(list); expected one of \(supportedArchitectures)")
            }
            architecture = only
        } else {
            switch modelType {
            case "idefics3": architecture = "Idefics3ForConditionalGeneration"
            case "smolvlm": architecture = "SmolVLMForConditionalGeneration"
            case "llama": architecture = "LlamaForCausalLM"
            default:
                throw f.error("model_type", "is '\(modelType)' and 'architectures' is absent; supported: "
                              + "\(supportedArchitectures)")
            }
        }
        switch architecture {
        case "Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration": return .idefics3(try Idefics3Config(f))
        case "LlamaForCausalLM": return .llama(try HFLlamaConfig(f))
        default:
            throw f.error("architectures", "is ['\(architecture)']; supported: \(supportedArchitectures)")
        }
    }
}

/// `Idefics3Config`: the vision tower, the pixel-shuffle factor, the Llama text model and the image token id.
public struct Idefics3Config: Equatable, Sendable {
    public var vision: SigLIPVisionConfig
    public var text: HFLlamaConfig
    /// Pixel shuffle folds `scaleFactor x scaleFactor` patches into one image token.
    public var scaleFactor: Int
    public var imageTokenId: Int

    /// Image tokens per side after pixel shuffle.
    public var gridSide: Int { vision.patchesPerSide / scaleFactor }
    public var tokensPerImage: Int { gridSide * gridSide }

    init(_ f: JSONFields) throws {
        let modelType = try f.string("model_type", default: "idefics3")
        guard modelType == "idefics3" || modelType == "smolvlm" else {
            throw f.error("model_type", "is '\(modelType)' for an Idefics3 / SmolVLM architecture")
        }
        vision = try SigLIPVisionConfig(f.object("vision_config") ?? JSONFields(path: f.path, prefix: "vision_config.", object: [:]))
        // The top-level tie_word_embeddings is Idefics3's own (default false); a text_config value overrides it.
        let tied = try f.bool("tie_word_embeddings", default: false)
        if let textFields = try f.object("text_config") {
            text = try HFLlamaConfig(textFields, tiedDefault: tied)
        } else {
            text = try HFLlamaConfig(JSONFields(path: f.path, prefix: "text_config.", object: [:]), tiedDefault: tied,
                                     defaultRMSNormEpsilon: 1e-5)
        }
        scaleFactor = try f.int("scale_factor", default: 2)
        imageTokenId = try f.int("image_token_id", default: 128_257)
        guard scaleFactor >= 1, vision.patchesPerSide % scaleFactor == 0 else {
            throw f.error("scale_factor", "= \(scaleFactor) must divide the \(vision.patchesPerSide) patches per side")
        }
        guard (0..<text.llama.vocabularySize).contains(imageTokenId) else {
            throw f.error("image_token_id", "= \(imageTokenId) is outside the text vocabulary (\(text.llama.vocabularySize))")
        }
    }
}
