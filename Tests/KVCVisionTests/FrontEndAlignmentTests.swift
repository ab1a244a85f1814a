import Foundation
import XCTest
import KVCBackbone
import KVCCore
import KVCGGUF
import KVCTensor
import KVCTokenizer
@testable import KVCVision

/// Stage 2 through the real frozen SmolLM2 decoder on real easy-VQA questions.
final class FrontEndAlignmentTests: XCTestCase {
    private func makeTrainer(directory: String) throws -> FrontEndAlignment {
        let file = try GGUFFile(path: TestSupport.modelPath())
        let graph = try LlamaGraph(file: file)
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        var rng = SeededRandom(seed: 9)
        let encoder = try VisionEncoder(rng: &rng)
        let frontEnd = FrontEnd(encoder: encoder,
                                projector: Projector(inputDim: 128, hiddenDim: 64, outputDim: graph.config.hiddenSize,
                                                     outputScale: 0.5, rng: &rng))
        var options = FrontEndAlignment.Options()
        options.imagesPerStep = 1
        options.questionsPerImage = 2
        options.learningRate = 3e-3
        return FrontEndAlignment(graph: graph, tokenizer: try BPETokenizer.fromGGUF(file), frontEnd: frontEnd,
                                 train: try dataset.load(.train), test: try dataset.load(.test), options: options,
                                 runDirectory: directory)
    }

    func testAFewStepsLowerTheLossOnAFixedBatch() throws {
        let trainer = try makeTrainer(directory: try TestSupport.temporaryDirectory())
        let batch = trainer.makeBatch(step: 0)
        XCTAssertEqual(batch.questions, 2)
        XCTAssertEqual(batch.rows.count, batch.targets.count)
        let optimizer = AdamW(parameters: trainer.frontEnd.projector.parameters, learningRate: 3e-3, weightDecay: 0)
        for p in trainer.frontEnd.encoder.parameters { p.requiresGrad = false }
        var losses: [Double] = []
        // The batch is rebuilt each step (same images and questions): its input is a function of the projector.
        for step in 0..<5 { losses.append(try trainer.trainStep(trainer.makeBatch(step: 0), step: step, optimizers: [optimizer]).loss) }
        XCTAssertLessThan(losses.last!, losses.first! * 0.8, "losses \(losses)")
    }

    func testSavedFrontEndReloadsToIdenticalOutputs() throws {
        let dir = try TestSupport.temporaryDirectory()
        let trainer = try makeTrainer(directory: dir)
        trainer.frontEnd.backboneFingerprint = "abc"
        let images = [try Image.load(path: TestSupport.easyVQARoot() + "/test/images/0.png")]
        let before = trainer.frontEnd.embed(images)
        try trainer.frontEnd.save(to: dir + "/fe.safetensors")
        let loaded = try FrontEnd.load(from: dir + "/fe.safetensors", expectingBackbone: "abc")
        XCTAssertEqual(loaded.embed(images), before)
        XCTAssertEqual(loaded.projector.outputScale, 0.5)
        XCTAssertThrowsError(try FrontEnd.load(from: dir + "/fe.safetensors", expectingBackbone: "other")) {
            XCTAssertTrue("\($0)".contains("aligned to backbone abc"), "\($0)")
        }
    }
}
