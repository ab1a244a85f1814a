import KVCBackbone
import KVCCore
import KVCVision

/// Prompts in SmolVLM's format, built as transformers' `Idefics3Processor` builds them: every `<image>` placeholder in
/// the text becomes, for a global image alone, `<fake_token_around_image><global-img>` + `<image>` x tokensPerImage +
/// `<fake_token_around_image>`; for an image split into rows x cols tiles, `<fake_token_around_image><row_r_col_c>` +
/// `<image>` x tokensPerImage per tile, a newline after each row, then a newline and the global image's block.
/// The chat turn is SmolVLM's template for one user message: `<|im_start|>User:{content}<end_of_utterance>\nAssistant:`
/// with the images first.
public enum SmolVLMPrompt {
    public static let imagePlaceholder = "<image>"

    /// `text` with its i-th `<image>` expanded for an image of `tiles[i]` (rows, cols) tiles; images beyond `tiles`
    /// are global images alone.
    public static func expandImages(in text: String, tokensPerImage: Int, tiles: [(rows: Int, cols: Int)] = []) -> String {
        let run = String(repeating: imagePlaceholder, count: tokensPerImage)
        let global = "<fake_token_around_image><global-img>" + run + "<fake_token_around_image>"
        var parts = text.components(separatedBy: imagePlaceholder)
        for i in 1..<max(parts.count, 1) {
            let grid = i - 1 < tiles.count ? tiles[i - 1] : (rows: 0, cols: 0)
            var block = ""
            if grid.rows > 0 && grid.cols > 0 {
                for r in 1...grid.rows {
                    for c in 1...grid.cols { block += "<fake_token_around_image><row_\(r)_col_\(c)>" + run }
                    block += "\n"
                }
                block += "\n"
            }
            parts[i] = block + global + parts[i]
        }
        return parts.joined()
    }

    /// The user turn asking `question` about `imageCount` images, ending with the assistant prompt.
    public static func chat(question: String, imageCount: Int) -> String {
        "<|im_start|>User:" + String(repeating: imagePlaceholder, count: imageCount) + question
            + "<end_of_utterance>\nAssistant:"
    }
}

extension SmolVLM {
    /// Token ids of `text` (special tokens written in it are matched), with its `<image>` placeholders expanded for
    /// this model's image size and each image's tiles (`imageInputs`; none: global images alone).
    /// - Throws: `KVCError` when the directory has no usable tokenizer.
    public func encode(_ text: String, images: [ImageInput] = []) throws -> [Int] {
        guard let backbone else {
            throw KVCError.file(directory, "no usable tokenizer.json: give token ids (--token-ids) instead of text")
        }
        let tiles = images.map { (rows: $0.rows, cols: $0.cols) }
        let expanded = vision.map {
            SmolVLMPrompt.expandImages(in: text, tokensPerImage: $0.config.tokensPerImage, tiles: tiles)
        } ?? text
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

    /// Generates after exactly `tokenIds` (image-token positions filled from `imageInputs`, in order) with the full
    /// float16 cache. Requires a tokenizer only to print text; `onToken` receives each id and its text ("" without
    /// a tokenizer).
    public func generate(tokenIds: [Int], imageInputs: [ImageInput], parameters: GenerationParameters,
                         onToken: ((Int, String) -> Bool)? = nil) throws -> [Int] {
        let pieces = try prompt(tokenIds: tokenIds, imageTokens: imageInputs.flatMap(\.tokens)).pieces
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
