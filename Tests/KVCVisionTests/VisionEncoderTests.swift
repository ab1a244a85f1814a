import Foundation
import KVCCore
import KVCTensor
@testable import KVCVision
import XCTest

final class VisionEncoderTests: XCTestCase {
    func testEncoderProducesAnEightByEightGridOfTokens() throws {
        var rng = SeededRandom(seed: 3)
        let encoder = try VisionEncoder(rng: &rng)
        let images = [Image(width: 64, height: 64, pixels: (0..<64 * 64 * 3).map { UInt8($0 % 251) }),
                      Image(width: 20, height: 30, pixels: [UInt8](repeating: 200, count: 20 * 30 * 3))]
        let out = Tensor.withNoGrad { encoder.encode(images) }
        XCTAssertEqual(out.tokens.shape, [2, 64, 128])
        XCTAssertEqual([out.gridHeight, out.gridWidth], [8, 8])
        XCTAssertTrue(out.tokens.scalars.allSatisfy(\.isFinite))
        // Each image is encoded independently of the others in the batch.
        let alone = Tensor.withNoGrad { encoder.encode([images[1]]) }
        XCTAssertEqual(Array(out.tokens.scalars.dropFirst(64 * 128)), alone.tokens.scalars)
    }

    func testGridTokensFollowImageLayout() throws {
        // A single bright pixel in the top-right corner changes only tokens whose receptive field reaches it: the
        // top-right grid cell changes, the bottom-left one (token 56) does not.
        var rng = SeededRandom(seed: 4)
        let encoder = try VisionEncoder(rng: &rng)
        var pixels = [UInt8](repeating: 0, count: 64 * 64 * 3)
        let blank = Image(width: 64, height: 64, pixels: pixels)
        pixels[(0 * 64 + 63) * 3] = 255
        let dot = Image(width: 64, height: 64, pixels: pixels)
        let t = Tensor.withNoGrad { encoder.encode([blank, dot]).tokens.scalars }
        func token(_ image: Int, _ index: Int) -> ArraySlice<Float> {
            t[(image * 64 + index) * 128..<(image * 64 + index + 1) * 128]
        }
        XCTAssertNotEqual(token(0, 7), token(1, 7))
        XCTAssertEqual(token(0, 56), token(1, 56))
    }

    func testSavedEncoderReloadsToIdenticalOutputs() throws {
        var rng = SeededRandom(seed: 5)
        let encoder = try VisionEncoder(rng: &rng)
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/encoder.safetensors"
        try encoder.save(to: path, metadata: ["note": "test"])
        let reloaded = try VisionEncoder.load(from: path, expecting: .easyVQA)
        XCTAssertEqual(reloaded.config, encoder.config)
        let image = try Image.load(path: TestSupport.fixture("rgb.png"))
        let a = Tensor.withNoGrad { encoder.encode([image]).tokens.scalars }
        let b = Tensor.withNoGrad { reloaded.encode([image]).tokens.scalars }
        XCTAssertEqual(a, b)
        // Saving is deterministic: same weights and config, same bytes (the config JSON has sorted keys).
        try reloaded.save(to: dir + "/again.safetensors", metadata: ["note": "test"])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)),
                       try Data(contentsOf: URL(fileURLWithPath: dir + "/again.safetensors")))

        // Another grid is refused with the reason; so is a file that is not an encoder checkpoint.
        var small = VisionEncoderConfig.easyVQA
        small.strides = [1, 2, 2, 2, 2]
        XCTAssertThrowsError(try VisionEncoder.load(from: path, expecting: small)) {
            XCTAssertTrue("\($0)".contains(path) && "\($0)".contains("does not match"), "\($0)")
        }
        var rng2 = SeededRandom(seed: 6)
        let head = ShapeColourHead(tokenDim: 128, rng: &rng2)
        let headPath = dir + "/head.safetensors"
        try head.save(to: headPath)
        XCTAssertThrowsError(try VisionEncoder.load(from: headPath)) {
            XCTAssertTrue("\($0)".contains("expected 'kvc-vision-encoder'"), "\($0)")
        }
    }

    /// A few optimisation steps on one small batch of real images lower the stage-1 loss.
    func testPretrainingStepsLowerTheLoss() throws {
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let test = try dataset.load(.test)
        let targets = ShapeColourPretraining.Targets(images: test.images, labels: EasyVQALabels(questions: test.questions))
        var rng = SeededRandom(seed: 7)
        let encoder = try VisionEncoder(rng: &rng)
        let head = ShapeColourHead(tokenDim: 128, rng: &rng)
        let batch = Array(0..<16)
        let pixels = ShapeColourPretraining.batchPixels(test.images, rows: batch.map { targets.rows[$0] },
                                                        normalization: .symmetric, augment: false, rng: &rng)
        let optimizer = AdamW(parameters: encoder.parameters + head.parameters, learningRate: 1e-3)
        var losses: [Float] = []
        for _ in 0..<8 {
            optimizer.zeroGrad()
            let loss = ShapeColourPretraining.loss(head(encoder(pixels)), shape: batch.map { targets.shape[$0] },
                                                   colour: batch.map { targets.colour[$0] })
            losses.append(loss.item)
            loss.backward()
            optimizer.step()
        }
        XCTAssertLessThan(losses.last!, losses.first! * 0.7, "losses \(losses)")
        // Before training the loss is near chance: ln 3 + ln 8 ≈ 3.18.
        XCTAssertEqual(losses.first!, log(3) + log(8), accuracy: 1.5)
    }

    func testSymmetryAugmentationPermutesPixels() throws {
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let images = try dataset.load(.test).images
        var rng = SeededRandom(seed: 8)
        let plain = ShapeColourPretraining.batchPixels(images, rows: [3], normalization: .symmetric, augment: false,
                                                       rng: &rng).scalars
        for _ in 0..<4 {
            let aug = ShapeColourPretraining.batchPixels(images, rows: [3], normalization: .symmetric, augment: true,
                                                         rng: &rng).scalars
            XCTAssertEqual(aug.sorted(), plain.sorted())  // same multiset of values per image
        }
    }
}
