import KVCBackbone
import KVCTokenizer

/// How images and a question become a prompt for the frozen decoder (ChatML user turn, one-word assistant answer):
///
///     <|im_start|>user\n <image>[tokens of image 1]</image>\n ... <image>[tokens of image K]</image>\n QUESTION<|im_end|>\n<|im_start|>assistant\n
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

    /// The question and the assistant prompt after the images.
    public func suffix(question: String, tokenizer: BPETokenizer) -> [Int] {
        tokenizer.encode(question + questionEnd)
    }

    /// Token ids of an answer as the model should produce it (no leading space: it starts the assistant turn).
    public func answer(_ text: String, tokenizer: BPETokenizer) -> [Int] { tokenizer.encode(text) }

    /// Prompt pieces for `images` (each `[tokensPerImage * hidden]` embeddings) and `question`.
    /// - Returns: the pieces and, per image, the index of its first token in the prompt.
    public func pieces(imageEmbeddings: [[Float]], tokensPerImage: Int, question: String,
                       tokenizer: BPETokenizer) -> (pieces: [PromptPiece], imageStarts: [Int]) {
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
        pieces.append(.tokens(suffix(question: question, tokenizer: tokenizer)))
        return (pieces, starts)
    }
}
