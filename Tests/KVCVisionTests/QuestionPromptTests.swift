import Foundation
import XCTest
import KVCBackbone
import KVCCore
import KVCGGUF
import KVCTensor
import KVCTokenizer
@testable import KVCVision

/// The learned tokens after the question: where they go in the prompt, that training reaches them and nothing else,
/// and that their file is checked against the front end it was trained with.
final class QuestionPromptTests: XCTestCase {
    func testSuffixPutsTheLearnedTokensBetweenQuestionAndEndOfTurn() throws {
        let tokenizer = try BPETokenizer.fromGGUF(GGUFFile(path: TestSupport.modelPath()))
        var prompt = VisionPrompt(tokenizer: tokenizer)
        let question = "Is there a red shape?"
        let plain = prompt.suffix(question: question, tokenizer: tokenizer)
        guard case .tokens(let plainIDs) = plain.first, plain.count == 1 else { return XCTFail("plain suffix \(plain)") }

        prompt.questionPrompt = .embeddings([Float](repeating: 0.25, count: 3 * 576), count: 3)
        let pieces = prompt.suffix(question: question, tokenizer: tokenizer)
        XCTAssertEqual(pieces.count, 3)
        XCTAssertEqual(pieces[1], .embeddings([Float](repeating: 0.25, count: 3 * 576), count: 3))
        guard case .tokens(let q) = pieces[0], case .tokens(let end) = pieces[2] else { return XCTFail("pieces \(pieces)") }
        // Tokenizing the two halves apart gives the plain prompt's ids ('<|im_end|>' is special, so it splits anyway).
        XCTAssertEqual(q + end, plainIDs)
        XCTAssertEqual(q, tokenizer.encode(question))
        XCTAssertEqual(pieces.positionCount, plainIDs.count + 3)

        // In the assistant turn the learned tokens come last: the last of them predicts the answer.
        prompt.questionPromptPlacement = .assistantTurn
        XCTAssertEqual(prompt.suffix(question: question, tokenizer: tokenizer),
                       [.tokens(plainIDs), .embeddings([Float](repeating: 0.25, count: 3 * 576), count: 3)])
    }

    func testSavedPromptReloadsAndRefusesAnotherFrontEnd() throws {
        let dir = try TestSupport.temporaryDirectory()
        var rng = SeededRandom(seed: 4)
        let prompt = QuestionPrompt(tokens: Tensor.uniform([5, 576], low: -1, high: 1, rng: &rng),
                                    layerResidual: Tensor.uniform([29, 5, 576], low: -1, high: 1, rng: &rng),
                                    layerResidualScale: (1...29).map { Float($0) }, placement: .assistantTurn,
                                    frontEndDigest: "fe1", initText: " Look.")
        let path = QuestionPrompt.companionPath(of: dir + "/front.safetensors")
        XCTAssertEqual(path, dir + "/front.question-prompt.safetensors")
        try prompt.save(to: path)
        let loaded = try QuestionPrompt.load(from: path, hidden: 576, layers: 30, expectingFrontEnd: "fe1")
        XCTAssertEqual(loaded.tokens.scalars, prompt.tokens.scalars)
        XCTAssertEqual(loaded.initText, " Look.")
        XCTAssertEqual(loaded.placement, .assistantTurn)
        XCTAssertEqual(loaded.layerResidualScale, (1...29).map { Float($0) })
        XCTAssertEqual(loaded.piece, prompt.piece)
        XCTAssertThrowsError(try QuestionPrompt.load(from: path, hidden: 576, layers: 12, expectingFrontEnd: nil)) {
            XCTAssertTrue("\($0)".contains("tensor 'layer_residual' has shape [29, 5, 576]"), "\($0)")
        }
        XCTAssertThrowsError(try QuestionPrompt.load(from: path, hidden: 576, layers: 30, expectingFrontEnd: "fe2")) {
            XCTAssertTrue("\($0)".contains("trained with front end fe1"), "\($0)")
        }
        XCTAssertThrowsError(try QuestionPrompt.load(from: path, hidden: 960, layers: 30, expectingFrontEnd: nil)) {
            XCTAssertTrue("\($0)".contains("expected [1...256, 960]"), "\($0)")
        }
        // A front-end checkpoint is not a question prompt.
        let frontEndPath = dir + "/front.safetensors"
        try FrontEnd(encoder: try VisionEncoder(rng: &rng),
                     projector: Projector(inputDim: 128, hiddenDim: 8, outputDim: 576, rng: &rng)).save(to: frontEndPath)
        XCTAssertThrowsError(try QuestionPrompt.load(from: frontEndPath, hidden: 576, layers: 30, expectingFrontEnd: nil)) {
            XCTAssertTrue("\($0)".contains("expected 'kvc-question-prompt'"), "\($0)")
        }
    }

    /// With the projector frozen, a few steps on a fixed batch lower the loss by moving the question prompt alone.
    func testTrainingMovesOnlyTheQuestionPrompt() throws {
        let file = try GGUFFile(path: TestSupport.modelPath())
        let graph = try LlamaGraph(file: file)
        let tokenizer = try BPETokenizer.fromGGUF(file)
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        var rng = SeededRandom(seed: 9)
        let frontEnd = FrontEnd(encoder: try VisionEncoder(rng: &rng),
                                projector: Projector(inputDim: 128, hiddenDim: 64, outputDim: graph.config.hiddenSize,
                                                     outputScale: 0.5, rng: &rng))
        let start = graph.embed(tokenizer.encode(" Look at the image."))
        let prompt = QuestionPrompt(tokens: Tensor(shape: start.shape, values: start.scalars, requiresGrad: true),
                                    frontEndDigest: "")
        var options = FrontEndAlignment.Options()
        options.imagesPerStep = 1
        options.questionsPerImage = 2
        let trainer = FrontEndAlignment(graph: graph, tokenizer: tokenizer, frontEnd: frontEnd, questionPrompt: prompt,
                                        train: try dataset.load(.train), test: try dataset.load(.test), options: options,
                                        runDirectory: try TestSupport.temporaryDirectory())
        let batch = trainer.makeBatch(step: 0)
        // Each question's suffix holds the prompt's rows on top of the plain suffix.
        XCTAssertEqual(batch.packing.groups[0].suffixes.count, 2)
        for p in frontEnd.parameters { p.requiresGrad = false }
        let frozen = frontEnd.parameters.map(\.scalars)
        let optimizer = AdamW(parameters: prompt.parameters, learningRate: 1e-2, weightDecay: 0)
        var losses: [Double] = []
        for step in 0..<5 { losses.append(try trainer.trainStep(trainer.makeBatch(step: 0), step: step, optimizers: [optimizer]).loss) }
        XCTAssertLessThan(losses.last!, losses.first! * 0.8, "losses \(losses)")
        XCTAssertNotEqual(prompt.tokens.scalars, start.scalars)
        XCTAssertEqual(frontEnd.parameters.map(\.scalars), frozen, "the frozen front end changed")
    }

    /// The VLM takes the front end's companion prompt by default, none on request, and refuses one trained with
    /// another front end.
    func testVisionLanguageModelLoadsTheCompanionPrompt() throws {
        let dir = try TestSupport.temporaryDirectory()
        var rng = SeededRandom(seed: 5)
        let frontEndPath = dir + "/front.safetensors"
        try FrontEnd(encoder: try VisionEncoder(rng: &rng),
                     projector: Projector(inputDim: 128, hiddenDim: 8, outputDim: 576, rng: &rng)).save(to: frontEndPath)
        let model = try TestSupport.modelPath()
        let plain = try VisionLanguageModel.load(modelPath: model, frontEndPath: frontEndPath)
        XCTAssertNil(plain.questionPromptPath)
        XCTAssertNil(plain.prompt.questionPrompt)

        let prompt = QuestionPrompt(tokens: Tensor.uniform([2, 576], low: -1, high: 1, rng: &rng),
                                    layerResidual: Tensor.uniform([29, 2, 576], low: -1, high: 1, rng: &rng),
                                    frontEndDigest: try Checksum.xxh128(file: frontEndPath))
        let companion = QuestionPrompt.companionPath(of: frontEndPath)
        try prompt.save(to: companion)
        let steered = try VisionLanguageModel.load(modelPath: model, frontEndPath: frontEndPath)
        XCTAssertEqual(steered.questionPromptPath, companion)
        XCTAssertEqual(steered.prompt.questionPrompt, prompt.piece)
        XCTAssertEqual(steered.suffix(question: "What shape is it?").positionCount,
                       plain.suffix(question: "What shape is it?").positionCount + 2)
        XCTAssertNil(try VisionLanguageModel.load(modelPath: model, frontEndPath: frontEndPath, questionPrompt: .none)
            .prompt.questionPrompt)

        prompt.frontEndDigest = "0123"
        try prompt.save(to: companion)
        XCTAssertThrowsError(try VisionLanguageModel.load(modelPath: model, frontEndPath: frontEndPath)) {
            XCTAssertTrue("\($0)".contains("trained with front end 0123"), "\($0)")
        }
    }

    /// The shipped recipe reads as the experiment it describes, and a bad placement is refused by name.
    func testRecipeSectionParses() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let text = try String(contentsOfFile: root + "/recipes/frontend-easyvqa-question-prompt.yaml", encoding: .utf8)
        let recipe = try FrontEndRecipe(RecipeSection.parse(text, file: "question-prompt.yaml"))
        XCTAssertEqual(recipe.questionPromptPlacement, .assistantTurn)
        XCTAssertTrue(recipe.questionPromptDeep)
        XCTAssertEqual(recipe.alignment.projectorLearningRateScale, 0)
        XCTAssertEqual(recipe.alignment.questionPromptResidualLearningRateScale, 2)
        XCTAssertEqual(recipe.alignment.initFrom, "checkpoints/frontend-easyvqa.safetensors")
        let bad = text.replacingOccurrences(of: "placement: assistant-turn", with: "placement: system-turn")
        XCTAssertThrowsError(try FrontEndRecipe(RecipeSection.parse(bad, file: "bad.yaml"))) {
            XCTAssertTrue("\($0)".contains("placement"), "\($0)")
        }
    }
}
