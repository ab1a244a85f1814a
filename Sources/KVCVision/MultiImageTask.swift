import KVCCore

/// easy-VQA with K images per prompt: the long, image-dominated contexts of real VLM use. Each prompt shows K test
/// images; each question is about one of them and says which ("In image 3, what shape is ...?"). With K = 1 it is
/// plain easy-VQA (questions unchanged, file order), so K = 1 results equal the single-image evaluation's.
///
/// Deterministic under a seed: images are shuffled by `seed` and cut into groups of K (an incomplete last group is
/// dropped); a prompt asks up to `questionsPerImage` questions about each of its images, in slot order.
public struct MultiImageTask: Sendable {
    public struct Question: Sendable, Equatable {
        /// As asked (names the image when K > 1).
        public var text: String
        /// The easy-VQA question.
        public var original: String
        public var expected: String
        public var imageID: Int
        /// 1-based position of the image in the prompt.
        public var slot: Int
    }

    public struct Prompt: Sendable, Equatable {
        public var imageIDs: [Int]
        public var questions: [Question]
    }

    public let images: Int
    public let prompts: [Prompt]
    /// The kind of questions asked (`EasyVQASplit.AnswerKind`); anything but `.all` is named in the task.
    public let answerKind: EasyVQASplit.AnswerKind

    public var name: String {
        (images == 1 ? "easy-vqa" : "easy-vqa-multi") + (answerKind == .all ? "" : "-\(answerKind.rawValue)")
    }
    public var questionCount: Int { prompts.reduce(0) { $0 + $1.questions.count } }

    /// How a question names its image.
    public static func ask(_ question: String, slot: Int, images: Int) -> String {
        images == 1 ? question : "In image \(slot), \(question)"
    }

    /// - Parameters:
    ///   - limit: at most this many questions in all (nil: every question of every complete group).
    ///   - questionsPerImage: at most this many per image (nil: all; default 1 when K > 1 so that a fixed number of
    ///     questions spans more prompts).
    ///   - answerKind: ask only these questions (images without one are left out).
    public init(split: EasyVQASplit, images k: Int, limit: Int? = nil, seed: UInt64 = 0, questionsPerImage: Int? = nil,
                answerKind: EasyVQASplit.AnswerKind = .all) throws {
        guard k >= 1 else { throw KVCError("multi-image task: --images must be >= 1, not \(k)") }
        images = k
        self.answerKind = answerKind
        var order: [Int] = [], byImage: [Int: [EasyVQA.Question]] = [:]
        for q in split.questions(answerKind).questions where split.images.row(of: q.imageID) != nil {
            if byImage[q.imageID] == nil { order.append(q.imageID) }
            byImage[q.imageID, default: []].append(q)
        }
        if k > 1 {
            var rng = SeededRandom(seed: seed)
            rng.shuffle(&order)
        }
        let perImage = questionsPerImage ?? (k == 1 ? Int.max : 1)
        var prompts: [Prompt] = [], remaining = limit ?? Int.max
        for start in stride(from: 0, to: order.count - k + 1, by: k) where remaining > 0 {
            let ids = Array(order[start..<(start + k)])
            var questions: [Question] = []
            for (s, id) in ids.enumerated() {
                for q in byImage[id]!.prefix(perImage) where remaining > 0 {
                    questions.append(Question(text: Self.ask(q.text, slot: s + 1, images: k), original: q.text,
                                              expected: q.answer, imageID: id, slot: s + 1))
                    remaining -= 1
                }
            }
            prompts.append(Prompt(imageIDs: ids, questions: questions))
        }
        self.prompts = prompts
    }
}
