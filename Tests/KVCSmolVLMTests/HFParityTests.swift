import Foundation
import KVCCore
import KVCVision
import XCTest
@testable import KVCSmolVLM

/// Parity with Python transformers on the tiny random checkpoints of `Fixtures/` (made by
/// `scripts/reference/smolvlm_tiny_reference.py`): logits and every layer's cached keys (post-RoPE) and values.
///
/// Error measure: `max |ours - theirs| / max |theirs|` over the whole tensor (elementwise ratios are meaningless for
/// entries near zero). The bound is the 1e-4.
final class HFParityTests: XCTestCase {
    static let tolerance: Float = 1e-4

    func testIdefics3ParityWithTransformers() throws {
        let dir = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir, warn: { XCTFail("unexpected warning: \($0)") })
        guard let vision = model.vision else { return XCTFail("Idefics3 directory loaded without a vision tower") }
        XCTAssertEqual(vision.config.gridSide, 3)

        let image = try Image.load(path: dir + "/image.png")
        let pixels = vision.processor.pixels(image)
        XCTAssertLessThanOrEqual(maxRelativeError(pixels, try expected.floats("pixel_values")), 1e-6,
                                 "preprocessing differs from the image processor's pixel_values")

        let ids = try expected.ints("input_ids")
        let dump = try ParityDump.run(model: model, tokenIds: ids, images: [image])
        try assertParity(dump, expected, layers: 3, label: "idefics3")
    }

    /// Image splitting as SmolVLM ships it: a 100x70 image becomes 2x2 tiles + the global image (5 x 9 tokens behind
    /// `<row_r_col_c>` markers); pixels, prompt ids, logits and K/V against the processor and model with splitting on.
    func testImageSplittingMatchesTransformers() throws {
        let dir = try Fixture.copy("idefics3")
        try FileManager.default.removeItem(atPath: dir + "/preprocessor_config.json")
        try FileManager.default.copyItem(atPath: dir + "/preprocessor_config.split.json", toPath: dir + "/preprocessor_config.json")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir)
        let vision = try XCTUnwrap(model.vision)
        XCTAssertTrue(vision.processor.doImageSplitting)
        let image = try Image.load(path: dir + "/split.png")

        let processed = vision.processor.process(image)
        XCTAssertEqual([processed.rows, processed.cols, processed.images.count], [2, 2, 5])
        let reference = try expected.floats("split.pixel_values"), ours = processed.images.flatMap { $0 }
        XCTAssertEqual(ours.count, reference.count)
        var largest: Float = 0
        for i in ours.indices { largest = max(largest, abs(ours[i] - reference[i])) }
        XCTAssertLessThanOrEqual(largest, 1e-6, "tile pixels")

        let inputs = try model.imageInputs(for: [image])
        let ids = try model.encode(try XCTUnwrap(expected.metadata["prompt"]), images: inputs)
        XCTAssertEqual(ids, try expected.ints("split.input_ids"))
        let (pieces, grids) = try model.prompt(tokenIds: ids, imageTokens: inputs.flatMap(\.tokens))
        XCTAssertEqual(grids.map(\.count), [9, 9, 9, 9, 9])
        try assertParity(try ParityDump.run(decoder: model.decoder, prompt: pieces), expected, layers: 3,
                         label: "idefics3 split", prefix: "split.")
    }

    /// SmolVLM2's class name loads the same network (the reference script checks transformers gives the same outputs).
    func testSmolVLMClassNameLoadsTheSameNetwork() throws {
        let dir = try Fixture.copy("idefics3")
        try Fixture.editConfig(dir) { config in
            config["architectures"] = ["SmolVLMForConditionalGeneration"]
            config["model_type"] = "smolvlm"
        }
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir)
        let dump = try ParityDump.run(model: model, tokenIds: try expected.ints("input_ids"),
                                      images: [Image.load(path: dir + "/image.png")])
        try assertParity(dump, expected, layers: 3, label: "smolvlm class")
    }

    /// Images of other sizes: the processor's two Lanczos resizes (aspect-preserving to `size.longest_edge`, then the
    /// square global image) reproduced to the 8-bit value, upscaling and downscaling.
    func testResizingMatchesThePILImageProcessor() throws {
        let dir = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let processor = try XCTUnwrap(SmolVLM(directory: dir).vision?.processor)
        XCTAssertEqual(processor.resample, .lanczos)
        for name in ["resize_wide", "resize_tall"] {
            let image = try Image.load(path: dir + "/\(name).png")
            XCTAssertNotEqual(image.width, processor.imageSize)
            let reference = try expected.floats("\(name).pixel_values")
            let ours = processor.pixels(image)
            var largest: Float = 0
            for i in ours.indices { largest = max(largest, abs(ours[i] - reference[i])) }
            XCTAssertLessThanOrEqual(largest, 1e-6, "\(name): largest pixel difference \(largest) (one 8-bit step is \(2.0 / 255))")
        }
    }

    func testLlamaParityWithTransformersFromShards() throws {
        let dir = try Fixture.directory("llama")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/model.safetensors.index.json"))
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir)
        XCTAssertNil(model.vision)
        let dump = try ParityDump.run(model: model, tokenIds: try expected.ints("input_ids"), images: [])
        try assertParity(dump, expected, layers: 2, label: "llama")
    }

    /// transformers 4.x writes `rope_theta` at the top of the (text) config instead of inside `rope_parameters`:
    /// the same model loads to the same numbers, and the value is really read (another theta moves the keys).
    func testTransformers4RopeThetaLayout() throws {
        let dir = try Fixture.copy("llama")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let ids = try expected.ints("input_ids")
        try Fixture.editConfig(dir) { config in
            config.removeValue(forKey: "rope_parameters")
            config["rope_theta"] = 100000.0
            config["rope_scaling"] = NSNull()
        }
        let dump = try ParityDump.run(model: SmolVLM(directory: dir), tokenIds: ids, images: [])
        try assertParity(dump, expected, layers: 2, label: "llama (4.x config)")

        try Fixture.editConfig(dir) { $0["rope_theta"] = 10000.0 }
        let other = try ParityDump.run(model: SmolVLM(directory: dir), tokenIds: ids, images: [])
        XCTAssertGreaterThan(maxRelativeError(other.keys[0], try expected.floats("layers.0.key")), 1e-3,
                             "rope_theta did not change the keys")
    }

    /// Half-precision checkpoints (how SmolVLM ships) load too; their results stay near the float32 reference.
    func testHalfPrecisionCheckpointsLoad() throws {
        let source = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: source + "/expected.safetensors")
        let image = try Image.load(path: source + "/image.png")
        for dtype in [SafetensorsDType.bf16, .f16] {
            let dir = try Fixture.copy("idefics3")
            try Fixture.rewrite(dir + "/model.safetensors") { name, _, shape, values in (name, dtype, shape, values) }
            let dump = try ParityDump.run(model: SmolVLM(directory: dir), tokenIds: try expected.ints("input_ids"), images: [image])
            let error = maxRelativeError(dump.logits, try expected.floats("logits"))
            XCTAssertLessThan(error, dtype == .bf16 ? 0.1 : 0.01, "\(dtype.rawValue) logits")
            XCTAssertGreaterThan(error, 0, "\(dtype.rawValue) weights were not rounded")
        }
    }

    private func assertParity(_ dump: ParityDump, _ expected: SafetensorsFile, layers: Int, label: String,
                              prefix: String = "") throws {
        XCTAssertEqual(dump.keys.count, layers)
        let logits = maxRelativeError(dump.logits, try expected.floats(prefix + "logits"))
        XCTAssertEqual(try expected.info(prefix + "logits").shape, [dump.tokenCount, dump.vocabularySize])
        XCTAssertLessThanOrEqual(logits, Self.tolerance, "\(label) logits")
        var worst: Float = 0
        for i in 0..<layers {
            XCTAssertEqual(try expected.info(prefix + "layers.\(i).key").shape, [dump.kvHeads, dump.tokenCount, dump.headDim])
            let k = maxRelativeError(dump.keys[i], try expected.floats(prefix + "layers.\(i).key"))
            let v = maxRelativeError(dump.values[i], try expected.floats(prefix + "layers.\(i).value"))
            XCTAssertLessThanOrEqual(k, Self.tolerance, "\(label) layer \(i) keys")
            XCTAssertLessThanOrEqual(v, Self.tolerance, "\(label) layer \(i) values")
            worst = max(worst, k, v)
        }
        print("parity \(label): logits max relative error \(logits), keys/values worst \(worst)")
    }
}

/// `max |a - b| / max |b|`.
func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "maxRelativeError: \(a.count) vs \(b.count) values")
    var diff: Float = 0, scale: Float = 0
    for i in a.indices {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return scale > 0 ? diff / scale : diff
}
