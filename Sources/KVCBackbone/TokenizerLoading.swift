import KVCCore
import KVCGGUF
import KVCTokenizer

extension BPETokenizer {
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata (byte-level BPE, `gpt2` model).
    /// - Throws: `KVCError` naming the metadata key that is missing or malformed.
    public static func fromGGUF(_ file: GGUFFile) throws -> BPETokenizer {
        let model = try file.string("tokenizer.ggml.model")
        guard model == "gpt2" else {
            throw KVCError.file(file.path, "tokenizer.ggml.model is '\(model)'; only byte-level BPE ('gpt2') is supported")
        }
        func optionalInt(_ key: String) throws -> Int? { file.metadata[key] == nil ? nil : try file.int(key) }
        let tokens = try file.stringArray("tokenizer.ggml.tokens")
        let merges = try file.stringArray("tokenizer.ggml.merges")
        let types = file.metadata["tokenizer.ggml.token_type"] == nil
            ? nil : try file.intArray("tokenizer.ggml.token_type").map { Int32(truncatingIfNeeded: $0) }
        let pre = file.metadata["tokenizer.ggml.pre"] == nil ? "default" : try file.string("tokenizer.ggml.pre")
        return try BPETokenizer(tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: pre,
                                bosTokenId: optionalInt("tokenizer.ggml.bos_token_id"),
                                eosTokenId: optionalInt("tokenizer.ggml.eos_token_id"),
                                padTokenId: optionalInt("tokenizer.ggml.padding_token_id"),
                                unknownTokenId: optionalInt("tokenizer.ggml.unknown_token_id"))
    }
}

extension ChatTemplate {
    /// The file's `tokenizer.chat_template` when it is ChatML, else SmolLM2's template.
    public static func fromGGUF(_ file: GGUFFile) -> ChatTemplate {
        guard let jinja = try? file.string("tokenizer.chat_template") else { return .smolLM2 }
        return ChatTemplate.fromGGUF(chatTemplate: jinja) ?? .smolLM2
    }
}
