import Foundation

/// One turn of a conversation.
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    public static func system(_ content: String) -> ChatMessage { ChatMessage(role: "system", content: content) }
    public static func user(_ content: String) -> ChatMessage { ChatMessage(role: "user", content: content) }
    public static func assistant(_ content: String) -> ChatMessage { ChatMessage(role: "assistant", content: content) }
}

/// How a conversation is written out for the model.
public enum ChatTemplate: Sendable, Equatable {
    /// ChatML: `<|im_start|>ROLE\nCONTENT<|im_end|>\n` per message, and `<|im_start|>assistant\n` as the
    /// generation prompt. When the first message is not a system message, a system message with
    /// `defaultSystemPrompt` goes first (if given), as SmolLM2's template does; an empty conversation renders
    /// as the generation prompt alone, as there.
    case chatML(defaultSystemPrompt: String?)

    /// The system prompt SmolLM2-Instruct's `tokenizer.chat_template` inserts.
    public static let smolLM2DefaultSystemPrompt = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    /// SmolLM2-Instruct's template.
    public static let smolLM2 = ChatTemplate.chatML(defaultSystemPrompt: smolLM2DefaultSystemPrompt)

    /// Recognises a ChatML `tokenizer.chat_template` (Jinja source) and its default system prompt, if it has
    /// one; nil for templates of other shapes (the caller decides whether to fall back or fail).
    /// This reads the template's literal text; it does not run Jinja.
    public static func fromGGUF(chatTemplate jinja: String) -> ChatTemplate? {
        guard jinja.contains("<|im_start|>"), jinja.contains("<|im_end|>") else { return nil }
        // The default system prompt is written literally: '<|im_start|>system\n...<|im_end|>', with the newline
        // either real or as a Jinja escape.
        for opening in ["<|im_start|>system\n", "<|im_start|>system\\n"] {
            guard let start = jinja.range(of: opening),
                  let end = jinja.range(of: "<|im_end|>", range: start.upperBound..<jinja.endIndex) else { continue }
            let literal = String(jinja[start.upperBound..<end.lowerBound])
            // A template that only prints the caller's system message has an expression here, not a literal.
            let expressionMarks = ["{", "' +", "+ '", "\" +", "+ \""]
            if !expressionMarks.contains(where: literal.contains) {
                let prompt = literal.replacingOccurrences(of: "\\n", with: "\n")
                    .replacingOccurrences(of: "\\'", with: "'").replacingOccurrences(of: "\\\"", with: "\"")
                return .chatML(defaultSystemPrompt: prompt)
            }
        }
        return .chatML(defaultSystemPrompt: nil)
    }

    /// The conversation as text, special tokens written out (encode it with `parseSpecial: true`).
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        switch self {
        case .chatML(let defaultSystemPrompt):
            var text = ""
            // Inside the template's message loop, so an empty conversation gets no system turn either.
            if let defaultSystemPrompt, let first = messages.first, first.role != "system" {
                text += Self.chatMLTurn(role: "system", content: defaultSystemPrompt)
            }
            for message in messages { text += Self.chatMLTurn(role: message.role, content: message.content) }
            if addGenerationPrompt { text += "<|im_start|>assistant\n" }
            return text
        }
    }

    private static func chatMLTurn(role: String, content: String) -> String {
        "<|im_start|>\(role)\n\(content)<|im_end|>\n"
    }
}

extension BPETokenizer {
    /// The token ids of a conversation in `template`.
    public func encodeChat(_ messages: [ChatMessage], template: ChatTemplate = .smolLM2,
                           addGenerationPrompt: Bool = true) -> [Int] {
        encode(template.render(messages, addGenerationPrompt: addGenerationPrompt), parseSpecial: true)
    }
}
