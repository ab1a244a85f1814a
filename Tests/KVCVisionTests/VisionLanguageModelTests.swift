import Foundation
import XCTest
import KVCBackbone
import KVCCore
import KVCTensor
@testable import KVCVision

/// The VLM (real frozen SmolLM2, random-init front end) and the easy-VQA evaluation built on it.
final class VisionLanguageModelTests: XCTestCase {
    private static var shared: VisionLanguageModel?

    /// One model for the whole class: the decoder takes a few seconds to load.
    private func model() throws -> VisionLanguageModel {
        if let m = Self.shared { return m }
        let backbone = try Backbone(path: TestSupport.modelPath())
        var rng = SeededRandom(seed: 21)
        let frontEnd = FrontEnd(encoder: try VisionEncoder(rng: &rng),
                                projector: Projector(inputDim: 128, hiddenDim: 64, outputDim: backbone.model.config.hiddenSize,
                                                     outputScale: 0.5, rng: &rng))
        let m = try VisionLanguageModel(backbone: backbone, frontEnd: frontEnd)
        Self.shared = m
        return m
    }

    // MARK: Answer parsing

    func testAnswerIsTheFirstWordLowercasedWithoutPunctuation() {
        XCTAssertEqual(AnswerText.firstWord("Yes, it is."), "yes")
        XCTAssertEqual(AnswerText.firstWord("  Circle.\nThe shape"), "circle")
        XCTAssertEqual(AnswerText.firstWord("TRIANGLE!"), "triangle")
        XCTAssertEqual(AnswerText.firstWord("\"Red\" is the colour"), "red")
        XCTAssertEqual(AnswerText.firstWord("... no"), "no", "a word without letters is not the first word")
        XCTAssertEqual(AnswerText.firstWord("gray"), "gray")
        XCTAssertEqual(AnswerText.firstWord(""), "")
        XCTAssertEqual(AnswerText.firstWord(" ?! "), "")

        XCTAssertFalse(AnswerText.hasCompleteFirstWord("Yes"), "the word may still grow")
        XCTAssertFalse(AnswerText.hasCompleteFirstWord("Yes,"), "punctuation alone does not end it")
        XCTAssertFalse(AnswerText.hasCompleteFirstWord(" ... "), "no word yet")
        XCTAssertTrue(AnswerText.hasCompleteFirstWord("Yes, "))
        XCTAssertTrue(AnswerText.hasCompleteFirstWord("The shape"))
    }

    // MARK: Prompts

    func testImagePrefixExposesGridsAndVisionPositions() throws {
        let vlm = try model()
        let image = try Image.load(path: TestSupport.easyVQARoot() + "/test/images/0.png")
        var seen: (length: Int, prefix: VisionLanguageModel.Prefix)?
        let prefilled = try vlm.prefill(images: [image, image]) { cache, prefix in seen = (cache.length, prefix) }
        let p = try XCTUnwrap(seen).prefix
        let side = vlm.frontEnd.gridSide, perImage = vlm.frontEnd.tokensPerImage
        XCTAssertEqual(seen?.length, p.length, "the hook sees the cache holding exactly the prefix")
        XCTAssertEqual(prefilled.cache.length, p.length)
        XCTAssertEqual(p.grids.count, 2)
        let first = vlm.prompt.userStart.count + vlm.prompt.imageOpen.count
        XCTAssertEqual(p.grids[0].start, first)
        XCTAssertEqual(p.grids[1].start, first + perImage + vlm.prompt.imageClose.count + vlm.prompt.imageOpen.count)
        XCTAssertEqual(p.grids.map(\.rows), [side, side])
        XCTAssertEqual(p.grids.map(\.count), [perImage, perImage])
        XCTAssertEqual(p.visionPositions.count, 2 * perImage)
        XCTAssertEqual(p.visionPositions.first, Int32(first))
        XCTAssertEqual(p.length, Int(p.visionPositions.last!) + 1 + vlm.prompt.imageClose.count)
    }

    func testBlindPromptHasNoImageTokens() throws {
        let vlm = try model()
        let image = try Image.load(path: TestSupport.easyVQARoot() + "/test/images/0.png")
        let prefilled = try vlm.prefill(images: [image], blind: true)
        XCTAssertTrue(prefilled.prefix.grids.isEmpty)
        XCTAssertTrue(prefilled.prefix.visionPositions.isEmpty)
        XCTAssertEqual(prefilled.prefix.pieces, [.tokens(vlm.prompt.userStart)])
        XCTAssertEqual(prefilled.cache.length, vlm.prompt.userStart.count)
        let seeing = try vlm.prefill(images: [image])
        XCTAssertTrue(seeing.prefix.pieces.contains { if case .embeddings = $0 { return true } else { return false } })
        XCTAssertEqual(seeing.prefix.length - prefilled.prefix.length,
                       vlm.prompt.imageOpen.count + vlm.frontEnd.tokensPerImage + vlm.prompt.imageClose.count)
    }

    // MARK: Shared prefix

    /// Lanes answer runs of images side by side: the same records, reported to the callback in question order, and the
    /// same summary apart from timing.
    func testLanesGiveTheSameAnswersInQuestionOrder() throws {
        let vlm = try model()
        let test = try EasyVQA(root: TestSupport.easyVQARoot()).load(.test)
        var options = EasyVQAEvaluation.Options()
        options.limit = 26
        let one = try EasyVQAEvaluation(model: vlm, options: options).run(test)
        options.lanes = 3
        var seen: [EasyVQAEvaluation.Record] = []
        let three = try EasyVQAEvaluation(model: vlm, options: options).run(test) { seen.append($0) }
        XCTAssertGreaterThanOrEqual(Set(one.records.map(\.image)).count, 3, "enough images for three lanes")
        XCTAssertEqual(three.records, one.records)
        XCTAssertEqual(seen, one.records, "the callback sees question order")
        XCTAssertEqual(three.summary.accuracy, one.summary.accuracy)
        XCTAssertEqual(three.summary.kv_bytes, one.summary.kv_bytes)
        XCTAssertEqual(three.summary.lanes, 3)
        XCTAssertNil(one.summary.lanes)
    }

    /// The evaluation prefills each image once and trims back between questions; a fresh one-call prefill of the
    /// whole prompt must give the same answers and (within float16-cache rounding) the same next-token logits.
    func testSharedPrefixMatchesFreshPrefill() throws {
        let vlm = try model()
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let test = try dataset.load(.test)
        var options = EasyVQAEvaluation.Options()
        let firstImage = test.questions[0].imageID
        options.limit = test.questions.prefix { $0.imageID == firstImage }.count + 3
        let result = try EasyVQAEvaluation(model: vlm, options: options).run(test)
        XCTAssertEqual(result.records.count, options.limit)
        XCTAssertGreaterThan(Set(result.records.map(\.image)).count, 1, "the questions should span several images")

        // A prefix per question (for question-aware caches): one fresh cache per question, the same answers.
        options.prefixPerQuestion = true
        var perQuestion = EasyVQAEvaluation(model: vlm, options: options)
        var caches = 0
        perQuestion.makeCache = { caches += 1; return vlm.backbone.model.makeCache() }
        XCTAssertEqual(try perQuestion.run(test).records, result.records)
        XCTAssertEqual(caches, options.limit)
        for (record, q) in zip(result.records, test.questions) {
            let image = test.images.image(row: test.images.row(of: q.imageID)!)
            let fresh = try vlm.answer(images: [image], question: q.text)
            XCTAssertEqual(record.answer, fresh.text, "question '\(q.text)' about image \(q.imageID)")
        }

        // Logits after continuing from a trimmed prefix (a different question was answered first) vs one call.
        let image = test.images.image(row: test.images.row(of: test.questions[0].imageID)!)
        let prefilled = try vlm.prefill(images: [image])
        _ = try vlm.answer(question: "what is the color of the shape?", after: prefilled)
        XCTAssertGreaterThan(prefilled.cache.length, prefilled.prefix.length)
        let question = "does the image contain a circle?"
        let continued = try vlm.firstAnswerLogits(question: question, after: prefilled)
        let whole = prefilled.prefix.pieces + vlm.suffix(question: question)
        let fresh = try vlm.backbone.model.forward(whole, cache: vlm.backbone.model.makeCache())
        XCTAssertEqual(continued.count, fresh.count)
        let scale = fresh.map(abs).max() ?? 1
        let worst = zip(continued, fresh).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(worst, 1e-2 * scale, "largest logit difference \(worst) (logit scale \(scale))")
        XCTAssertEqual(argmax(continued), argmax(fresh))
    }

    // MARK: Constrained answers (the blind baseline)

    func testConstrainedAnswerPicksTheLabelWithTheBestFirstTokenLogit() throws {
        let vlm = try model()
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let scorer = try ConstrainedAnswer(labels: dataset.answers, tokenizer: vlm.backbone.tokenizer)
        let vocab = vlm.backbone.model.config.vocabularySize
        for (i, label) in dataset.answers.enumerated() {
            // A logit spike on the capitalised spelling's first token selects the label, whatever the others hold.
            var logits = [Float](repeating: 0, count: vocab)
            let capitalised = label.prefix(1).uppercased() + label.dropFirst()
            let token = try XCTUnwrap(vlm.backbone.tokenizer.encode(capitalised).first)
            if scorer.firstTokens[i].contains(token) {
                logits[token] = 5
                XCTAssertEqual(scorer.choose(logits: logits), label)
            }
            logits = [Float](repeating: 0, count: vocab)
            logits[scorer.firstTokens[i][0]] = 1
            XCTAssertEqual(scorer.choose(logits: logits), label)
        }
        XCTAssertThrowsError(try ConstrainedAnswer(labels: ["red", "red"], tokenizer: vlm.backbone.tokenizer)) { error in
            XCTAssertTrue("\(error)".contains("'red'"), "\(error)")
        }

        // Blind and constrained, every answer is a label, and the summary says how the answers were chosen.
        var options = EasyVQAEvaluation.Options()
        options.limit = 12
        options.blind = true
        options.constrainedLabels = dataset.answers
        let result = try EasyVQAEvaluation(model: vlm, options: options).run(try dataset.load(.test))
        XCTAssertEqual(result.records.count, 12)
        XCTAssertTrue(result.records.allSatisfy { dataset.answers.contains($0.answer) }, "\(result.records.map(\.answer))")
        XCTAssertEqual(result.summary.constrained, true)
        XCTAssertEqual(result.summary.accuracy, Double(result.records.filter(\.correct).count) / 12, accuracy: 1e-12)
    }

    // MARK: Bad entries

    func testUnreadableImagesAreCountedAsSkippedWithTheirReason() throws {
        let vlm = try model()
        let source = try TestSupport.easyVQARoot()
        let root = try TestSupport.temporaryDirectory()
        let images = root + "/test/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: source + "/answers.txt", toPath: root + "/answers.txt")
        try FileManager.default.copyItem(atPath: source + "/test/images/0.png", toPath: images + "/0.png")
        // 1.png: a PNG cut short; 2.png: referenced but missing.
        let png = try Data(contentsOf: URL(fileURLWithPath: source + "/test/images/1.png"))
        try png.prefix(60).write(to: URL(fileURLWithPath: images + "/1.png"))
        let rows = """
            [["what is the red shape?", "triangle", 0], ["is there a circle?", "no", 0],
             ["what shape is it?", "circle", 1], ["what colour is it?", "blue", 2], ["malformed row", 3]]
            """
        try Data(rows.utf8).write(to: URL(fileURLWithPath: root + "/test/questions.json"))

        let split = try EasyVQA(root: root).load(.test)
        let result = try EasyVQAEvaluation(model: vlm).run(split)
        XCTAssertEqual(result.summary.n, 2, "only the questions about the readable image are answered")
        XCTAssertEqual(result.records.map(\.image), ["test/images/0.png", "test/images/0.png"])
        XCTAssertEqual(result.summary.skipped, result.skipped.count)
        let lines = result.skipped.map(\.description)
        XCTAssertTrue(lines.contains { $0.contains("1.png") && !$0.contains("question(s)") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains("2.png") && $0.contains("not found") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains("row 4") }, "malformed row: \(lines)")
        XCTAssertTrue(lines.contains { $0.contains("image 1") && $0.contains("1 question(s)") }, "\(lines)")
        XCTAssertGreaterThanOrEqual(result.summary.skipped, 5, "\(lines)")
    }
}

fileprivate func argmax(_ xs: [Float]) -> Int {
    var best = 0
    for i in xs.indices where xs[i] > xs[best] { best = i }
    return best
}
