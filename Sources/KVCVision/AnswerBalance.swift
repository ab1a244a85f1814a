import Foundation
import KVCCore

/// Question sampling that takes away the text-only shortcut of easy-VQA's yes/no questions.
///
/// Each easy-VQA image holds one shape, so "is there a red shape?" is "no" for seven colours out of eight: a decoder
/// that answers "no" to every plain question and "yes" to every negated one is right about 88% of the time without
/// looking at the image. Trained on the natural mix, the front end settles there (the yes/no accuracy of the first
/// front end was 82%, with the non-prior answer right under 2% of the time). Weighting every yes/no question by
/// `0.5 / P(answer | question text)` (measured on the training split) makes both answers equally likely for each
/// question text, so only the image tokens can lower the loss. Questions with other answers keep weight 1.
public struct AnswerBalance: Sendable {
    private let weights: [String: [String: Double]]   // question text -> answer -> weight

    public init(_ questions: [EasyVQA.Question]) {
        var counts: [String: [String: Int]] = [:]
        for q in questions where q.isYesNo { counts[q.text, default: [:]][q.answer, default: 0] += 1 }
        var weights: [String: [String: Double]] = [:]
        for (text, byAnswer) in counts {
            let total = Double(byAnswer.values.reduce(0, +))
            // A text seen with one answer only cannot be balanced; it keeps weight 1.
            guard byAnswer.count == 2 else { continue }
            weights[text] = byAnswer.mapValues { 0.5 * total / Double($0) }
        }
        self.weights = weights
    }

    /// The sampling weight of `question`.
    public func weight(_ question: EasyVQA.Question) -> Double {
        weights[question.text]?[question.answer] ?? 1
    }

    /// `count` of `questions` drawn without replacement with probability proportional to their weights
    /// (Efraimidis-Spirakis: the largest `log(u) / w`), in drawing order.
    public func sample(_ questions: [EasyVQA.Question], count: Int, rng: inout SeededRandom) -> [EasyVQA.Question] {
        let keyed = questions.map { q -> (key: Double, question: EasyVQA.Question) in
            // u in (0, 1]: log stays finite.
            let u = (Double(rng.next() >> 11) + 1) * 0x1p-53
            return (Foundation.log(u) / weight(q), q)
        }
        return keyed.sorted { $0.key > $1.key }.prefix(count).map(\.question)
    }
}
