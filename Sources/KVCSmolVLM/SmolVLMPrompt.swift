import KVCBackbone
import KVCCore
import KVCVision

/// Prompts in SmolVLM's format, built as transformers' `Idefics3Processor` builds them for single global images
/// (no tiles): every `<image>` placeholder in the text becomes
/// `<fake_token_around_image><global-img>` + `<image>` x tokensPerImage + `<fake_token_around_image>`.
/// The chat turn is SmolVLM's template for one user message: `<|im_start|>User:{content}<end_of_utterance>\nAssistant:`
/// with the images first.
public enum SmolVLMPrompt {
    public static let imagePlaceholder = "<image>"

    /// `text` with each `<image>` expanded to the global-image token run of `tokensPerImage` image tokens.
    public static func expandImages(in text: String, tokensPerImage: Int) -> String {
        let block = "<fake_token_around_image><global-img>" + String(repeating: imagePlaceholder, count: tokensPerImage)
            + "<fake_token_around_image>"
        return text.replacingOccurrences(of: imagePlaceholder, with: block)
    }

    /// The user turn asking `question` about `imageCount` images, ending with the assistant prompt.
    public static func chat(question: String, imageCount: Int) -> String {
        "<|im_start|>User:" + String(repeating: imagePlaceholder, count: imageCount) + question
            + "<end_of_utterance>\nAssistant:"
    }
}

extension SmolVLM {
    /// Token ids of `text` (special tokens written in it are matched), with its `<image>` placeholders expanded for
    /// this model's image size.
    /// - Throws: `KVCError` when the directory has no usable tokenizer.
    public func encode(_ text: String) throws -> [Int] {
        guard let backbone else {
            throw KVCError.file(directory, "no usable tokenizer.json: give token ids (--token-ids) instead of text")
        }
        let expanded = vision.map { SmolVLMPrompt.expandImages(in: text, tokensPerImage: $0.config.tokensPerImage) } ?? text
        return backbone.encode(expanded)
    }

    /// Tokens that end an answer: `<end_of_utterance>` (SmolVLM's end of turn), `<|im_end|>` and eos when the
    /// vocabulary has them.
    public var stopTokens: Set<Int> {
        guard let backbone else { return [] }
        var stops = backbone.defaultStopTokens
        if let id = backbone.tokenizer.tokenId("<end_of_utterance>") { stops.insert(id) }
        return stops
    }

    /// Generates after exactly `tokenIds` (image-token positions filled from `images`, in order) with the full
    /// float16 cache. Requires a tokenizer only to print text; `onToken` receives each id and its text ("" without
    /// a tokenizer).
    public func generate(tokenIds: [Int], images: [Image], parameters: GenerationParameters,
                         onToken: ((Int, String) -> Bool)? = nil) throws -> [Int] {
        let pieces = try prompt(tokenIds: tokenIds, imageTokens: imageTokens(for: images)).pieces
        var parameters = parameters
        if parameters.stopTokens == nil { parameters.stopTokens = stopTokens }
        if let backbone {
            return try backbone.generate(prompt: pieces, parameters: parameters, onToken: onToken).tokens
        }
        // No tokenizer: the same sampling loop over ids alone.
        let cache = decoder.makeCache()
        var sampler = Sampler(parameters)
        var logits = try decoder.forward(pieces, cache: cache)
        var out: [Int] = []
        while out.count < parameters.maxTokens, cache.length < decoder.config.contextLength {
            let next = sampler.next(logits)
            if parameters.stopTokens?.contains(next) ?? false { break }
            out.append(next)
            if let onToken, !onToken(next, "") { break }
            logits = try decoder.forward(tokens: [next], cache: cache)
        }
        return out
    }
}
