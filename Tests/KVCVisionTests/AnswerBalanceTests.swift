import KVCCore
import XCTest
@testable import KVCVision

final class AnswerBalanceTests: XCTestCase {
    private func question(_ text: String, _ answer: String, image: Int) -> EasyVQA.Question {
        EasyVQA.Question(text: text, answer: answer, answerIndex: 0, imageID: image)
    }

    /// "is there a red shape?" answered "no" 7 times and "yes" once, as in easy-VQA's colour questions.
    private var skewed: [EasyVQA.Question] {
        (0..<8).map { question("is there a red shape?", $0 == 0 ? "yes" : "no", image: $0) }
            + [question("what color is the shape?", "red", image: 0)]
    }

    func testWeightsMakeBothAnswersEquallyLikelyPerQuestionText() {
        let balance = AnswerBalance(skewed)
        let yes = skewed.filter { $0.answer == "yes" }.map(balance.weight).reduce(0, +)
        let no = skewed.filter { $0.answer == "no" }.map(balance.weight).reduce(0, +)
        XCTAssertEqual(yes, no, accuracy: 1e-12)
        XCTAssertEqual(balance.weight(skewed.last!), 1, "questions that are not yes/no keep weight 1")
    }

    func testTextSeenWithOneAnswerOnlyKeepsWeightOne() {
        let balance = AnswerBalance([question("is there a circle?", "no", image: 1), question("is there a circle?", "no", image: 2)])
        XCTAssertEqual(balance.weight(question("is there a circle?", "no", image: 1)), 1)
    }

    func testSamplingIsWithoutReplacementSeededAndFollowsTheWeights() {
        let balance = AnswerBalance(skewed)
        var rng = SeededRandom(seed: 7)
        let drawn = balance.sample(skewed, count: 4, rng: &rng)
        XCTAssertEqual(drawn.count, 4)
        var again = SeededRandom(seed: 7)
        XCTAssertEqual(balance.sample(skewed, count: 4, rng: &again), drawn, "same seed, same draw")
        for (i, q) in drawn.enumerated() { XCTAssertFalse(drawn[(i + 1)...].contains(q), "drawn twice: \(q)") }

        // Drawing one question of the 8 yes/no ones many times: "yes" (1 of 8 questions) comes out about half the time.
        let yesNo = Array(skewed.prefix(8))
        var rngMany = SeededRandom(seed: 11)
        let trials = 4000
        let yes = (0..<trials).filter { _ in balance.sample(yesNo, count: 1, rng: &rngMany)[0].answer == "yes" }.count
        XCTAssertEqual(Double(yes) / Double(trials), 0.5, accuracy: 0.04)
    }
}
