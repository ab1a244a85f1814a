import Foundation
import XCTest
import KVCCore
import KVCTensor
@testable import KVCVision

/// Stage 1 of the front end (encoder pretraining) saves its whole state after every epoch: a run cut off after an
/// epoch and started again ends bit-identical to an uninterrupted one (parameters, moments and the data-order stream
/// with its augmentation draws all come back), and a state saved under other options is refused.
final class StageOneResumeTests: XCTestCase {
    private struct Interrupted: Error {}

    /// 48 real test images and their questions: two epochs of three steps take a second or two.
    private func tinySplit() throws -> EasyVQASplit {
        try ChildProcess.requireAssets()
        let dataset = try EasyVQA(root: ChildProcess.easyVQA)
        let questions = try dataset.questions(.test).questions
        let ids = Array(Set(questions.map(\.imageID))).sorted().prefix(48)
        let images = EasyVQAImages.load(ids: Array(ids), side: EasyVQA.imageSide,
                                        path: { dataset.imagePath(.test, id: $0) }, progress: nil)
        let keep = Set(ids)
        return EasyVQASplit(split: .test, questions: questions.filter { keep.contains($0.imageID) }, images: images,
                            skipped: [])
    }

    private func model(seed: UInt64) throws -> (VisionEncoder, ShapeColourHead) {
        var rng = SeededRandom(seed: seed)
        let encoder = try VisionEncoder(rng: &rng)
        return (encoder, ShapeColourHead(tokenDim: encoder.config.tokenDim, rng: &rng))
    }

    private func bits(_ encoder: VisionEncoder) -> [UInt32] { encoder.parameters.flatMap { $0.scalars.map(\.bitPattern) } }

    func testStageOneResumesBitIdenticallyAfterAnInterruptedEpoch() throws {
        let split = try tinySplit()
        var options = ShapeColourPretraining.Options()
        options.epochs = 2
        options.batchSize = 16
        options.warmupSteps = 2
        options.progress = false

        let (straight, straightHead) = try model(seed: 1)
        let reference = try ShapeColourPretraining.train(encoder: straight, head: straightHead, train: split, test: split,
                                                         options: options)

        let state = try ChildProcess.temporaryDirectory("stage1") + "/stage1.train-state"
        let (first, firstHead) = try model(seed: 1)
        XCTAssertThrowsError(try ShapeColourPretraining.train(encoder: first, head: firstHead, train: split, test: split,
                                                              options: options, statePath: state) { reports in
            if reports.count == 1 { throw Interrupted() }   // as if killed right after the first epoch's checkpoint
        })
        let (resumed, resumedHead) = try model(seed: 99)   // other weights: everything must come from the state
        let reports = try ShapeColourPretraining.train(encoder: resumed, head: resumedHead, train: split, test: split,
                                                       options: options, statePath: state)
        XCTAssertEqual(bits(resumed), bits(straight), "resumed stage 1 differs from the uninterrupted run")
        XCTAssertEqual(reports.map(\.trainLoss), reference.map(\.trainLoss))

        var other = options
        other.learningRate *= 2
        let (again, againHead) = try model(seed: 1)
        XCTAssertThrowsError(try ShapeColourPretraining.train(encoder: again, head: againHead, train: split, test: split,
                                                              options: other, statePath: state)) {
            XCTAssertTrue("\($0)".contains("other stage-1 options") && "\($0)".contains(state), "\($0)")
        }
    }
}
