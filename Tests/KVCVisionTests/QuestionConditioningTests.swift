import Foundation
import XCTest
import KVCBackbone
import KVCCore
import KVCGGUF
import KVCTensor
import KVCTokenizer
@testable import KVCVision

/// Instruction-aware image tokens: the front end's `QuestionConditioning`, its checkpoint, its training through the
/// real frozen SmolLM2, and the VLM's refusal to answer one question from tokens made for another.
final class QuestionConditioningTests: XCTestCase {
    private func frontEnd(hidden: Int = 16, seed: UInt64 = 5) throws -> FrontEnd {
        var rng = SeededRandom(seed: seed)
        return FrontEnd(encoder: try VisionEncoder(rng: &rng),
                        projector: Projector(inputDim: 128, hiddenDim: 64, outputDim: 576, outputScale: 0.5, rng: &rng),
                        conditioning: QuestionConditioning(wordDim: 576, imageDim: 128, hidden: hidden, outputDim: 576,
                                                           rng: &rng))
    }

    private func words(_ count: Int, seed: UInt64) -> QuestionWords {
        var rng = SeededRandom(seed: seed)
        return QuestionWords(embeddings: Tensor.randn([count, 576], std: 0.05, rng: &rng).scalars, count: count)
    }

    private func images() throws -> [Image] {
        try [0, 1].map { try Image.load(path: TestSupport.easyVQARoot() + "/test/images/\($0).png") }
    }

    private func randomiseOutput(_ c: QuestionConditioning) {
        var rng = SeededRandom(seed: 77)
        let w = Tensor.randn(c.output.weight.shape, std: 0.2, rng: &rng)
        c.output.weight.assign(w.data)
    }

    func testFreshConditioningKeepsTheTokensAndATrainedOneDependsOnTheQuestionAndTheImage() throws {
        let fe = try frontEnd()
        let pictures = try images(), a = words(5, seed: 1), b = words(7, seed: 2)
        XCTAssertTrue(fe.readsQuestion)
        XCTAssertEqual(fe.embed(pictures, question: a), fe.embed(pictures), "the output layer starts at zero")
        randomiseOutput(try XCTUnwrap(fe.conditioning))
        let withA = fe.embed(pictures, question: a), withB = fe.embed(pictures, question: b)
        XCTAssertEqual(fe.embed(pictures, question: a), withA, "deterministic")
        XCTAssertNotEqual(withA[0], withB[0], "another question gives other tokens")
        XCTAssertNotEqual(withA[0], fe.embed(pictures)[0])
        // The offset is one vector per (image, question), added to every token of the image.
        let plain = fe.embed(pictures)
        func offset(image i: Int, token t: Int) -> [Float] {
            let base = t * 576
            return (0..<576).map { (j: Int) -> Float in withA[i][base + j] - plain[i][base + j] }
        }
        for i in 0..<2 {
            let first = offset(image: i, token: 0), tenth = offset(image: i, token: 9)
            for j in 0..<576 { XCTAssertEqual(first[j], tenth[j], accuracy: 1e-5) }
        }
        let offsetImage0 = withA[0][3] - plain[0][3], offsetImage1 = withA[1][3] - plain[1][3]
        XCTAssertNotEqual(offsetImage0, offsetImage1, accuracy: 1e-7, "the offset depends on the image too")
    }

    func testSavedConditionedFrontEndReloadsToIdenticalOutputsAndBadMetadataIsNamed() throws {
        let dir = try TestSupport.temporaryDirectory()
        let fe = try frontEnd(hidden: 24)
        randomiseOutput(try XCTUnwrap(fe.conditioning))
        let pictures = try images(), a = words(6, seed: 3)
        try fe.save(to: dir + "/fe.safetensors")
        let loaded = try FrontEnd.load(from: dir + "/fe.safetensors")
        XCTAssertEqual(loaded.conditioning?.hidden, 24)
        XCTAssertEqual(loaded.embed(pictures, question: a), fe.embed(pictures, question: a))

        // The same tensors with the conditioning's width misstated in the metadata.
        let file = try SafetensorsFile(path: dir + "/fe.safetensors")
        var meta = file.metadata
        meta["conditioning"] = "{\"hidden\":\"wide\"}"
        try fe.save(to: dir + "/bad.safetensors", dtype: .f32, metadata: meta)
        XCTAssertThrowsError(try FrontEnd.load(from: dir + "/bad.safetensors")) {
            XCTAssertTrue("\($0)".contains("bad.safetensors") && "\($0)".contains("'conditioning'"), "\($0)")
        }
    }

    func testAFewStepsTrainTheConditioningThroughTheFrozenDecoder() throws {
        let file = try GGUFFile(path: TestSupport.modelPath())
        let graph = try LlamaGraph(file: file)
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let fe = try frontEnd(hidden: 32)
        var options = FrontEndAlignment.Options()
        options.imagesPerStep = 1
        options.questionsPerImage = 3
        let trainer = FrontEndAlignment(graph: graph, tokenizer: try BPETokenizer.fromGGUF(file), frontEnd: fe,
                                        train: try dataset.load(.train), test: try dataset.load(.test), options: options,
                                        runDirectory: try TestSupport.temporaryDirectory())
        let batch = trainer.makeBatch(step: 0)
        XCTAssertEqual(batch.questions, 3)
        XCTAssertEqual(batch.packing.groups.count, 3, "every question has its own prefix: the tokens depend on it")
        XCTAssertEqual(batch.packing.groups.map(\.suffixes.count), [1, 1, 1])
        for p in fe.encoder.parameters + fe.projector.parameters { p.requiresGrad = false }
        let conditioning = try XCTUnwrap(fe.conditioning)
        let optimizer = AdamW(parameters: conditioning.parameters, learningRate: 3e-3, weightDecay: 0)
        var losses: [Double] = []
        for step in 0..<6 { losses.append(try trainer.trainStep(trainer.makeBatch(step: 0), step: step, optimizers: [optimizer]).loss) }
        XCTAssertLessThan(losses.last!, losses.first! * 0.8, "losses \(losses)")
    }

    /// Stage 3a on the shipped stage-2 encoder: a few hundred cheap steps teach the conditioning the comparison the
    /// decoder cannot make. The words alone score 85.3% on these questions ("no" to every plain question, "yes" to
    /// every negated one, what the decoder does); more needs the image.
    func testPretrainingTeachesTheConditioningToAnswerYesNoFromImageAndQuestion() throws {
        let shipped = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("checkpoints/frontend-easyvqa-run/frontend.safetensors").path
        let fe = try FrontEnd.load(from: shipped)
        let file = try GGUFFile(path: TestSupport.modelPath())
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        var rng = SeededRandom(seed: 4)
        let conditioning = QuestionConditioning(wordDim: 576, imageDim: 128, hidden: 256, outputDim: 576, rng: &rng)
        var options = QuestionConditioningPretraining.Options()
        options.steps = 600
        let report = try QuestionConditioningPretraining.run(
            conditioning: conditioning, encoder: fe.encoder, graph: try LlamaGraph(file: file),
            tokenizer: try BPETokenizer.fromGGUF(file), train: try dataset.load(.train), test: try dataset.load(.test),
            options: options, log: { _ in })
        XCTAssertEqual(report.testQuestions, 7136)
        XCTAssertGreaterThan(report.testYesNoAccuracy, 0.9)
        XCTAssertEqual(conditioning.output.weight.scalars.filter { $0 != 0 }.count, 0, "stage 3a leaves the output layer alone")
    }

    func testAPrefixMadeForOneQuestionRefusesAnother() throws {
        let backbone = try Backbone(path: TestSupport.modelPath())
        let fe = try frontEnd()
        randomiseOutput(try XCTUnwrap(fe.conditioning))
        let vlm = try VisionLanguageModel(backbone: backbone, frontEnd: fe)
        let image = try images()[0]
        XCTAssertThrowsError(try vlm.prefill(images: [image])) { XCTAssertTrue("\($0)".contains("pass the question"), "\($0)") }
        let prefilled = try vlm.prefill(images: [image], question: "what shape is this?")
        XCTAssertEqual(prefilled.question, "what shape is this?")
        XCTAssertNoThrow(try vlm.answer(question: "what shape is this?", after: prefilled))
        XCTAssertThrowsError(try vlm.answer(question: "is there a red shape?", after: prefilled)) {
            XCTAssertTrue("\($0)".contains("made for 'what shape is this?'"), "\($0)")
        }
        // The shared-prefix path and the one-call path read the same tokens.
        let oneCall = try vlm.answer(images: [image], question: "is there a red shape?")
        let twoCalls = try vlm.answer(question: "is there a red shape?",
                                      after: vlm.prefill(images: [image], question: "is there a red shape?"))
        XCTAssertEqual(oneCall.tokens, twoCalls.tokens)
        // The blind prompt holds no image tokens, so any question may follow it.
        XCTAssertNoThrow(try vlm.answer(question: "is there a red shape?", after: vlm.prefill(images: [image], blind: true)))
    }
}
