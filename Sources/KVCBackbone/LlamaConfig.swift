import KVCCore
import KVCGGUF

/// The shape of a Llama-architecture decoder, read from a GGUF file's `llama.*` metadata.
public struct LlamaConfig: Equatable, Sendable, Codable {
    public var layerCount: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var vocabularySize: Int
    /// Longest sequence the model was trained for (`llama.context_length`).
    public var contextLength: Int
    public var ropeBase: Double
    public var rmsNormEpsilon: Float

    public var queryDim: Int { headCount * headDim }
    public var kvDim: Int { kvHeadCount * headDim }
    /// Query heads that share one key/value head.
    public var queriesPerKVHead: Int { headCount / kvHeadCount }

    public init(layerCount: Int, hiddenSize: Int, intermediateSize: Int, headCount: Int, kvHeadCount: Int,
                headDim: Int, vocabularySize: Int, contextLength: Int, ropeBase: Double, rmsNormEpsilon: Float) {
        self.layerCount = layerCount
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.vocabularySize = vocabularySize
        self.contextLength = contextLength
        self.ropeBase = ropeBase
        self.rmsNormEpsilon = rmsNormEpsilon
    }

    /// Reads `general.architecture` (must be `llama`) and the `llama.*` hyper-parameters.
    /// The vocabulary size falls back to the length of `tokenizer.ggml.tokens` when `llama.vocab_size` is absent,
    /// as older converters omit it.
    public init(gguf file: GGUFFile) throws {
        let architecture = try file.string("general.architecture")
        guard architecture == "llama" else {
            throw KVCError.file(file.path, "general.architecture is '\(architecture)', expected 'llama'")
        }
        layerCount = try file.int("llama.block_count")
        hiddenSize = try file.int("llama.embedding_length")
        intermediateSize = try file.int("llama.feed_forward_length")
        headCount = try file.int("llama.attention.head_count")
        kvHeadCount = file.metadata["llama.attention.head_count_kv"] != nil
            ? try file.int("llama.attention.head_count_kv") : headCount
        contextLength = try file.int("llama.context_length")
        ropeBase = file.metadata["llama.rope.freq_base"] != nil ? Double(try file.float("llama.rope.freq_base")) : 10_000
        rmsNormEpsilon = try file.float("llama.attention.layer_norm_rms_epsilon")
        if file.metadata["llama.vocab_size"] != nil {
            vocabularySize = try file.int("llama.vocab_size")
        } else {
            vocabularySize = try file.stringArray("tokenizer.ggml.tokens").count
        }
        headDim = headCount > 0 ? hiddenSize / headCount : 0
        if file.metadata["llama.rope.dimension_count"] != nil {
            let ropeDims = try file.int("llama.rope.dimension_count")
            guard ropeDims == headDim else {
                throw KVCError.file(file.path, "llama.rope.dimension_count is \(ropeDims); only full-head rotary "
                                    + "embedding (\(headDim) = embedding_length / head_count) is supported")
            }
        }
        try validate(path: file.path)
    }

    /// Checks the numbers are usable before anything is allocated from them.
    public func validate(path: String) throws {
        func require(_ ok: Bool, _ what: String) throws {
            if !ok { throw KVCError.file(path, "invalid model hyper-parameters: \(what)") }
        }
        try require((1...1024).contains(layerCount), "llama.block_count = \(layerCount), expected 1...1024")
        try require((1...65_536).contains(hiddenSize), "llama.embedding_length = \(hiddenSize), expected 1...65536")
        try require((1...262_144).contains(intermediateSize), "llama.feed_forward_length = \(intermediateSize)")
        try require(headCount >= 1 && hiddenSize % headCount == 0,
                    "llama.attention.head_count = \(headCount) must divide embedding_length \(hiddenSize)")
        try require(kvHeadCount >= 1 && headCount % kvHeadCount == 0,
                    "llama.attention.head_count_kv = \(kvHeadCount) must divide head_count \(headCount)")
        try require(headDim % 2 == 0, "head dimension \(headDim) must be even for the rotary embedding")
        try require((1...1_048_576).contains(vocabularySize), "vocabulary size \(vocabularySize)")
        try require((1...1_048_576).contains(contextLength), "llama.context_length = \(contextLength)")
        try require(ropeBase > 1 && ropeBase.isFinite, "llama.rope.freq_base = \(ropeBase)")
        try require(rmsNormEpsilon > 0 && rmsNormEpsilon < 1, "layer_norm_rms_epsilon = \(rmsNormEpsilon)")
    }
}
