import KVCBackbone
import KVCTokenizer

/// How images and a question become a prompt for the frozen decoder (ChatML user turn, one-word assistant answer):
///
///     <|im_start|>user\n <image>[tokens of image 1]</image>\n ... <image>[tokens of image K]</image>\n QUESTION<|im_end|>\n<|im_start|>assistant\n
///
/// With a `QuestionPrompt`, its learned tokens sit between QUESTION and `<|im_end|>` (placement `user-turn`) or after
/// `assistant\n` (`assistant-turn`: the last learned token then predicts the answer's first token).
///
/// Each text piece is tokenized on its own, identically in training, collection and evaluation, so the token ids
/// around the image tokens never depend on the question. Everything up to the last `</image>\n` is the *prefix*,
/// shared by all questions about the same images.
public struct VisionPrompt: Sendable {
    public let userStart: [Int]
    public let imageOpen: [Int]
    public let imageClose: [Int]
    public let endOfTurn: Int?
    /// Text after the question: the end of the user turn and the assistant prompt.
    public let questionEnd: String
    /// Learned tokens after the question (`QuestionPrompt.piece`), if the front end has them.
    public var questionPrompt: PromptPiece?
    public var questionPromptPlacement = QuestionPrompt.Placement.userTurn

    public init(tokenizer: BPETokenizer) {
        self.init(tokenizer: tokenizer, userStart: "<|im_start|>user\n", imageOpen: "<image>", imageClose: "</image>\n",
                  questionEnd: "<|im_end|>\n<|im_start|>assistant\n")
    }

    /// Another model's format (SmolVLM: `<|im_start|>User:`, images between `<fake_token_around_image><global-img>`
    /// and `<fake_token_around_image>`, `<end_of_utterance>\nAssistant:`).
    public init(tokenizer: BPETokenizer, userStart: String, imageOpen: String, imageClose: String, questionEnd: String) {
        self.userStart = tokenizer.encode(userStart)
        self.imageOpen = tokenizer.encode(imageOpen)
        self.imageClose = tokenizer.encode(imageClose)
        self.questionEnd = questionEnd
        endOfTurn = tokenizer.endOfTurnTokenId
    }

    /// The question, any question prompt, and the assistant prompt after the images.
    public func suffix(question: String, tokenizer: BPETokenizer) -> [PromptPiece] {
        guard let learned = questionPrompt else { return [.tokens(plainSuffix(question, tokenizer: tokenizer))] }
        let (before, after) = aroundQuestionPrompt(question, tokenizer: tokenizer)
        return [.tokens(before), learned] + (after.isEmpty ? [] : [.tokens(after)])
    }

    /// Token ids of the suffix without a question prompt: the question and the assistant prompt, tokenized together.
    public func plainSuffix(_ question: String, tokenizer: BPETokenizer) -> [Int] {
        tokenizer.encode(question + questionEnd)
    }

    /// Token ids before and after the question prompt: the question, then the end of the user turn with the
    /// assistant prompt, tokenized apart where the learned tokens go between them.
    public func aroundQuestionPrompt(_ question: String, tokenizer: BPETokenizer) -> (before: [Int], after: [Int]) {
        switch questionPromptPlacement {
        case .userTurn: return (tokenizer.encode(question), tokenizer.encode(questionEnd))
        case .assistantTurn: return (tokenizer.encode(question + questionEnd), [])
        }
    }

    /// Token ids of an answer as the model should produce it (no leading space: it starts the assistant turn).
    public func answer(_ text: String, tokenizer: BPETokenizer) -> [Int] { tokenizer.encode(text) }

    /// Prompt pieces for `images` (each `[tokensPerImage * hidden]` embeddings) and `question`.
    /// - Returns: the pieces and, per image, the index of its first token in the prompt.
    public func pieces(imageEmbeddings: [[Float]], tokensPerImage: Int, question: String,
                       tokenizer: BPETokenizer) -> (pieces: [PromptPiece], imageStarts: [Int]) {
        let (pieces, starts) = prefix(imageEmbeddings: imageEmbeddings, tokensPerImage: tokensPerImage)
        return (pieces + suffix(question: question, tokenizer: tokenizer), starts)
    }

    /// The part of the prompt before the question: the user turn up to the last `</image>\n`.
    public func prefix(imageEmbeddings: [[Float]], tokensPerImage: Int) -> (pieces: [PromptPiece], imageStarts: [Int]) {
        var pieces: [PromptPiece] = [.tokens(userStart)]
        var position = userStart.count
        var starts: [Int] = []
        for e in imageEmbeddings {
            pieces.append(.tokens(imageOpen))
            position += imageOpen.count
            starts.append(position)
            pieces.append(.embeddings(e, count: tokensPerImage))
            position += tokensPerImage
            pieces.append(.tokens(imageClose))
            position += imageClose.count
        }
        return (pieces, starts)
    }
}
