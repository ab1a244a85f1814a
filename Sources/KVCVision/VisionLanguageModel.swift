import Dispatch
import Foundation
import KVCBackbone
import KVCCollect
import KVCCore
import KVCTokenizer

/// The VLM as a user meets it: the frozen decoder, the trained front end and the prompt format they were aligned
/// with. Answers questions about images greedily over any `KVCache`.
///
/// A prompt splits into a *prefix* (the user turn up to the last `</image>\n`, holding every image token) and a
/// *suffix* (question and assistant prompt). The prefix does not depend on the question, so `prefill(images:)` runs
/// it once and `answer(question:after:)` continues from it for each question, trimming the cache back in between.
/// That is also where a compressing cache acts: the `afterPrefill` hook sees the cache holding exactly the prefix,
/// with the grid and positions of every image's tokens (what `CapsuleCache.compress(grids:visionPositions:)` takes).
///
/// A front end that reads the question (`ImageTokenSource.readsQuestion`) makes image tokens for one question: its
/// prefix is prefilled with that question (`prefill(images:question:)`) and serves only it.
public final class VisionLanguageModel {
    public let backbone: Backbone
    /// The vision side: the project's trained `FrontEnd`, or another `ImageTokenSource` (a SmolVLM tower).
    public let frontEnd: any ImageTokenSource
    public let prompt: VisionPrompt
    /// Where the learned question prompt came from (nil: the plain prompt).
    public private(set) var questionPromptPath: String?
    /// Most tokens generated per answer; easy-VQA answers are one word of one to three tokens.
    public var maxAnswerTokens = 8

    /// - Parameter prompt: the prompt format (default: the ChatML format the project's front end was aligned with).
    public init(backbone: Backbone, frontEnd: any ImageTokenSource, prompt: VisionPrompt? = nil) throws {
        guard frontEnd.tokenWidth == backbone.model.config.hiddenSize else {
            throw KVCError("the front end projects to \(frontEnd.tokenWidth)-d tokens but the decoder's "
                           + "hidden size is \(backbone.model.config.hiddenSize)")
        }
        self.backbone = backbone
        self.frontEnd = frontEnd
        self.prompt = prompt ?? VisionPrompt(tokenizer: backbone.tokenizer)
    }

    /// Loads the decoder from `modelPath` and the front end from `frontEndPath`, refusing a front end aligned to
    /// another decoder file, and the front end's learned question prompt as `questionPrompt` says.
    public static func load(modelPath: String = Assets.smolLM2GGUF, frontEndPath: String,
                            questionPrompt: QuestionPromptSource = .companion) throws -> VisionLanguageModel {
        guard FileManager.default.fileExists(atPath: frontEndPath) else {
            throw KVCError.file(frontEndPath, "front-end checkpoint not found; train one with kvc-train (recipes/"
                                + "frontend-easyvqa.yaml) or pass the path of one")
        }
        let backbone = try Backbone(path: modelPath)
        let fingerprint = try Checksum.xxh128(file: backbone.path)
        var prompt = VisionPrompt(tokenizer: backbone.tokenizer)
        let promptPath: String?
        switch questionPrompt {
        case .none: promptPath = nil
        case .file(let path): promptPath = path
        case .companion:
            let path = QuestionPrompt.companionPath(of: frontEndPath)
            promptPath = FileManager.default.fileExists(atPath: path) ? path : nil
        }
        if let promptPath {
            let c = backbone.model.config
            let learned = try QuestionPrompt.load(from: promptPath, hidden: c.hiddenSize, layers: c.layerCount,
                                                  expectingFrontEnd: Checksum.xxh128(file: frontEndPath))
            prompt.questionPrompt = learned.piece
            prompt.questionPromptPlacement = learned.placement
        }
        let vlm = try VisionLanguageModel(backbone: backbone,
                                          frontEnd: FrontEnd.load(from: frontEndPath, expectingBackbone: fingerprint),
                                          prompt: prompt)
        vlm.questionPromptPath = promptPath
        return vlm
    }

    // MARK: Prompts

    /// The image part of a prompt and where its image tokens sit.
    public struct Prefix {
        public let pieces: [PromptPiece]
        /// Positions the prefix occupies (the cache length after prefilling it).
        public let length: Int
        /// One grid per image; `start` is the position of its first (top-left) token, tokens run row-major.
        public let grids: [ImageGrid]
        /// Positions of every image token, ascending.
        public var visionPositions: [Int32] {
            grids.flatMap { g in (g.start..<g.start + g.count).map { Int32($0) } }
        }
    }

    /// The prefix for image tokens `imageEmbeddings` (each `[tokensPerImage * hidden]`), built by `VisionPrompt`
    /// exactly as in training. No embeddings gives the blind prompt: the user turn without any image block.
    public func prefix(imageEmbeddings: [[Float]]) -> Prefix {
        let (pieces, starts) = prompt.prefix(imageEmbeddings: imageEmbeddings, tokensPerImage: frontEnd.tokensPerImage)
        let side = frontEnd.gridSide
        return Prefix(pieces: pieces, length: pieces.positionCount,
                      grids: starts.map { ImageGrid(start: $0, rows: side, cols: side) })
    }

    /// What follows the prefix for `question`: its tokens, the question prompt if there is one, the assistant prompt.
    public func suffix(question: String) -> [PromptPiece] { prompt.suffix(question: question, tokenizer: backbone.tokenizer) }

    /// The question's words for a front end that reads them (nil when it does not): the decoder's token embeddings
    /// of the question text, tokenized as in the prompt.
    public func questionWords(_ question: String) throws -> QuestionWords? {
        guard frontEnd.readsQuestion else { return nil }
        let ids = backbone.tokenizer.encode(question)
        guard !ids.isEmpty else { throw KVCError("the question is empty; this front end makes its image tokens for a question") }
        return QuestionWords(embeddings: try backbone.model.embed(tokens: ids), count: ids.count)
    }

    /// The image tokens of `images` for `question` (the question matters only to a front end that reads it).
    public func imageEmbeddings(_ images: [Image], question: String?) throws -> [[Float]] {
        if frontEnd.readsQuestion && question == nil {
            throw KVCError("this front end makes its image tokens for a question (it reads the question): pass the question")
        }
        return frontEnd.embed(images, question: try question.flatMap(questionWords))
    }

    // MARK: Answers

    public struct Timing: Sendable, Equatable {
        public var frontEndSeconds = 0.0
        public var prefillSeconds = 0.0
        public var decodeSeconds = 0.0
        public var totalSeconds: Double { frontEndSeconds + prefillSeconds + decodeSeconds }
        public init() {}
    }

    public struct Answer: Sendable, Equatable {
        /// The first word of the generation, lowercased, without punctuation (see `AnswerText.firstWord`).
        public var text: String
        /// Generated token ids (generation stops once the first word is complete).
        public var tokens: [Int]
        /// The generated text as decoded.
        public var generation: String
        public var timing: Timing
    }

    /// A cache holding a prefilled prefix, ready for any number of questions about the same images.
    public final class PrefilledPrefix {
        public let prefix: Prefix
        public let cache: KVCache
        public internal(set) var timing: Timing
        /// The question the image tokens were made for, when the front end reads it (nil: any question).
        public let question: String?
        init(prefix: Prefix, cache: KVCache, timing: Timing, question: String?) {
            self.prefix = prefix
            self.cache = cache
            self.timing = timing
            self.question = question
        }

        /// Drops everything after the prefix (an earlier question and its answer).
        public func rewind() { cache.trim(to: prefix.length) }
    }

    /// Runs the front end over `images` and prefills their prefix into `cache` (default: a fresh float16
    /// `PlainKVCache`; it must be empty), then calls `afterPrefill` (for example to compress the vision span).
    /// `blind` leaves the images out of the prompt (the blind baseline: same decoder, no image tokens). A front end
    /// that reads the question needs `question`, and the prefix then serves that question only.
    public func prefill(images: [Image], question: String? = nil, blind: Bool = false, cache: KVCache? = nil,
                        afterPrefill: ((KVCache, Prefix) throws -> Void)? = nil) throws -> PrefilledPrefix {
        let t0 = DispatchTime.now()
        let embeddings = blind || images.isEmpty ? [] : try imageEmbeddings(images, question: question)
        let frontEndSeconds = elapsed(t0, DispatchTime.now())
        let prefilled = try prefill(imageEmbeddings: embeddings, question: embeddings.isEmpty ? nil : question,
                                    cache: cache, afterPrefill: afterPrefill)
        prefilled.timing.frontEndSeconds = frontEndSeconds
        return prefilled
    }

    /// `prefill(images:)` for image tokens the front end already produced (each `[tokensPerImage * hidden]`;
    /// none for the blind prompt), so callers can batch the front end over many images. `question`: the one the
    /// tokens were made for, if the front end reads it.
    public func prefill(imageEmbeddings: [[Float]], question: String? = nil, cache: KVCache? = nil,
                        afterPrefill: ((KVCache, Prefix) throws -> Void)? = nil) throws -> PrefilledPrefix {
        let cache = cache ?? backbone.model.makeCache()
        guard cache.length == 0 else { throw KVCError("prefill needs an empty cache; this one holds \(cache.length) positions") }
        let t0 = DispatchTime.now()
        let built = prefix(imageEmbeddings: imageEmbeddings)
        // A score-based eviction cache ranks tokens by the attention they receive here, so it sees the queries.
        _ = try backbone.model.forward(built.pieces, cache: cache, logits: .none,
                                       observeQueries: (cache as? QueryObservingCache)?.queryObserver)
        try afterPrefill?(cache, built)
        var timing = Timing()
        timing.prefillSeconds = elapsed(t0, DispatchTime.now())
        return PrefilledPrefix(prefix: built, cache: cache, timing: timing,
                               question: frontEnd.readsQuestion && !imageEmbeddings.isEmpty ? question : nil)
    }

    /// A front end that reads the question made the prefix's image tokens for one question: refuse another, which
    /// would be answered from tokens that describe the image for the wrong question.
    private func checkQuestion(_ question: String, against prefilled: PrefilledPrefix) throws {
        guard frontEnd.readsQuestion, !prefilled.prefix.grids.isEmpty, prefilled.question != question else { return }
        throw KVCError("this front end reads the question: the prefilled image tokens were made for "
                       + (prefilled.question.map { "'\($0)'" } ?? "no question") + ", not for '\(question)'; "
                       + "prefill the images again with this question")
    }

    /// Answers `question` from a prefilled prefix: trims the cache back to the prefix (dropping an earlier
    /// question), then generates greedily. The timing counts this question only.
    public func answer(question: String, after prefilled: PrefilledPrefix) throws -> Answer {
        try checkQuestion(question, against: prefilled)
        prefilled.rewind()
        return try generateAnswer(prompt: suffix(question: question), cache: prefilled.cache)
    }

    /// Next-token logits where the answer to `question` starts, continuing from the prefix (what fidelity metrics
    /// compare between caches: top-1 agreement, KL). Leaves the question in the cache.
    public func firstAnswerLogits(question: String, after prefilled: PrefilledPrefix) throws -> [Float] {
        try checkQuestion(question, against: prefilled)
        prefilled.rewind()
        return try backbone.model.forward(suffix(question: question), cache: prefilled.cache)
    }

    /// Answers one question about `images` with `cache` (default: a fresh float16 `PlainKVCache`).
    ///
    /// Without a hook the whole prompt is prefilled in one forward call (the plain way, and the reference that the
    /// shared-prefix path is tested against). With `afterPrefill`, the image prefix is prefilled first, the hook
    /// acts on the cache, and the question follows.
    public func answer(images: [Image], question: String, blind: Bool = false, cache: KVCache? = nil,
                       afterPrefill: ((KVCache, Prefix) throws -> Void)? = nil) throws -> Answer {
        if let afterPrefill {
            let prefilled = try prefill(images: images, question: question, blind: blind, cache: cache,
                                        afterPrefill: afterPrefill)
            var result = try answer(question: question, after: prefilled)
            result.timing.frontEndSeconds += prefilled.timing.frontEndSeconds
            result.timing.prefillSeconds += prefilled.timing.prefillSeconds
            return result
        }
        let cache = cache ?? backbone.model.makeCache()
        guard cache.length == 0 else { throw KVCError("answer needs an empty cache; this one holds \(cache.length) positions") }
        let t0 = DispatchTime.now()
        let embeddings = blind || images.isEmpty ? [] : try imageEmbeddings(images, question: question)
        let frontEndSeconds = elapsed(t0, DispatchTime.now())
        let pieces = prefix(imageEmbeddings: embeddings).pieces + suffix(question: question)
        var result = try generateAnswer(prompt: pieces, cache: cache)
        result.timing.frontEndSeconds = frontEndSeconds
        return result
    }

    /// Greedy generation that stops as soon as the first word is complete (or at end of turn, or the token cap).
    private func generateAnswer(prompt pieces: [PromptPiece], cache: KVCache) throws -> Answer {
        var text = ""
        let result = try backbone.generate(prompt: pieces, parameters: .greedy(maxTokens: maxAnswerTokens), cache: cache) { _, piece in
            text += piece
            return !AnswerText.hasCompleteFirstWord(text)
        }
        var timing = Timing()
        timing.prefillSeconds = result.prefillSeconds
        timing.decodeSeconds = result.decodeSeconds
        return Answer(text: AnswerText.firstWord(result.text), tokens: result.tokens, generation: result.text, timing: timing)
    }
}

/// How a generation becomes an answer: its first word, lowercased, without punctuation.
public enum AnswerText {
    /// The first whitespace-separated word that has a letter or digit, lowercased, with punctuation and symbols
    /// removed ("Yes, it is." -> "yes", "  Circle." -> "circle", "... no" -> "no"). Empty when there is none.
    public static func firstWord(_ text: String) -> String {
        for word in text.split(whereSeparator: { $0.isWhitespace }) {
            let kept = String(word.unicodeScalars.filter(isWordScalar).map(Character.init)).lowercased()
            if !kept.isEmpty { return kept }
        }
        return ""
    }

    /// True once more text cannot change `firstWord(text)`: a word with a letter or digit is followed by whitespace.
    public static func hasCompleteFirstWord(_ text: String) -> Bool {
        guard let last = text.last else { return false }
        var words = text.split(whereSeparator: { $0.isWhitespace })
        if !last.isWhitespace && !words.isEmpty { words.removeLast() }   // may still be growing
        return words.contains { $0.unicodeScalars.contains(where: isWordScalar) }
    }

    private static func isWordScalar(_ s: Unicode.Scalar) -> Bool {
        s.properties.isAlphabetic || s.properties.numericType != nil
    }
}

/// Seconds from `a` to `b`.
func elapsed(_ a: DispatchTime, _ b: DispatchTime = DispatchTime.now()) -> Double {
    Double(b.uptimeNanoseconds - a.uptimeNanoseconds) / 1e9
}
