import Dispatch
import KVCCore
import KVCGGUF
import KVCTokenizer

/// The frozen backbone as a user meets it: the decoder, its tokenizer and chat template from one GGUF file,
/// and text generation over any `KVCache`.
public final class Backbone: @unchecked Sendable {
    public let model: LlamaModel
    public let tokenizer: BPETokenizer
    public let chatTemplate: ChatTemplate
    public let path: String

    /// Loads the model file (default: the project's SmolLM2 asset).
    public convenience init(path: String = Assets.smolLM2GGUF) throws {
        let file = try GGUFFile(path: Assets.require(path))
        try self.init(file: file)
    }

    public init(file: GGUFFile) throws {
        path = file.path
        model = try LlamaModel(file: file)
        tokenizer = try BPETokenizer.fromGGUF(file)
        chatTemplate = ChatTemplate.fromGGUF(file)
        guard tokenizer.vocabularySize <= model.config.vocabularySize else {
            throw KVCError.file(file.path, "the tokenizer has \(tokenizer.vocabularySize) tokens but the model's "
                                + "vocabulary is \(model.config.vocabularySize)")
        }
    }

    /// Token ids of raw text (special tokens such as `<|im_start|>` written in it are recognised). No BOS is added:
    /// this model's `tokenizer.ggml.add_bos_token` is false.
    public func encode(_ text: String) -> [Int] { tokenizer.encode(text, parseSpecial: true) }

    /// Token ids of a single user turn in the model's chat template, ending with the assistant prompt.
    public func encodeChat(user text: String) -> [Int] {
        tokenizer.encodeChat([.user(text)], template: chatTemplate)
    }

    /// Tokens that end a turn: `<|im_end|>` and eos.
    public var defaultStopTokens: Set<Int> {
        Set([tokenizer.endOfTurnTokenId, tokenizer.eosTokenId].compactMap { $0 })
    }

    public struct GenerationResult: Sendable {
        public enum StopReason: String, Sendable { case stopToken = "stop_token", maxTokens = "max_tokens", callback }
        public var promptTokens: [Int]
        public var tokens: [Int]
        public var text: String
        public var stopReason: StopReason
        public var prefillSeconds: Double
        public var decodeSeconds: Double
    }

    /// Generates after `prompt` (token ids and/or embeddings), streaming each token's text to `onToken`
    /// (return false to stop). The cache defaults to a fresh float16 `PlainKVCache`; pass another implementation
    /// (compressed, evicting) to generate over it.
    /// - Throws: `KVCError` for a prompt longer than the context length, bad token ids or parameters.
    public func generate(prompt: [PromptPiece], parameters: GenerationParameters = .greedy(), cache: KVCache? = nil,
                         onToken: ((Int, String) -> Bool)? = nil) throws -> GenerationResult {
        try parameters.validate()
        let cache = cache ?? model.makeCache()
        let promptLength = prompt.reduce(0) { $0 + $1.count }
        guard promptLength > 0 else { throw KVCError("the prompt is empty") }
        let context = model.config.contextLength
        guard cache.length + promptLength <= context else {
            throw KVCError("the prompt has \(promptLength) tokens (plus \(cache.length) cached), more than the model's "
                           + "context length of \(context)")
        }
        let stops = parameters.stopTokens ?? defaultStopTokens
        var sampler = Sampler(parameters)
        var stream = StreamingDecoder(tokenizer: tokenizer)
        let promptTokens = prompt.flatMap { piece -> [Int] in if case .tokens(let ids) = piece { return ids } else { return [] } }

        let t0 = DispatchTime.now()
        var logits = try model.forward(prompt, cache: cache)
        let t1 = DispatchTime.now()
        var tokens: [Int] = []
        var text = ""
        var reason = GenerationResult.StopReason.maxTokens
        while tokens.count < parameters.maxTokens && cache.length < context {
            let next = sampler.next(logits)
            if stops.contains(next) { reason = .stopToken; break }
            tokens.append(next)
            let piece = stream.push(next)
            text += piece
            if let onToken, !onToken(next, piece) { reason = .callback; break }
            if tokens.count == parameters.maxTokens || cache.length + 1 > context { break }
            logits = try model.forward(tokens: [next], cache: cache)
        }
        let rest = stream.finish()
        text += rest
        if !rest.isEmpty, let last = tokens.last { _ = onToken?(last, rest) }
        let t2 = DispatchTime.now()
        return GenerationResult(promptTokens: promptTokens, tokens: tokens, text: text, stopReason: reason,
                                prefillSeconds: seconds(t0, t1), decodeSeconds: seconds(t1, t2))
    }

    public func generate(text: String, chat: Bool = false, parameters: GenerationParameters = .greedy(),
                         onToken: ((Int, String) -> Bool)? = nil) throws -> GenerationResult {
        let ids = chat ? encodeChat(user: text) : encode(text)
        return try generate(prompt: [.tokens(ids)], parameters: parameters, onToken: onToken)
    }
}

func seconds(_ a: DispatchTime, _ b: DispatchTime) -> Double {
    Double(b.uptimeNanoseconds - a.uptimeNanoseconds) / 1e9
}
