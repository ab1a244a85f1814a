import Foundation
import KVCCore
import KVCVision
import XCTest
@testable import KVCSmolVLM

/// Damaged model directories fail at load with an error naming the file and the tensor or field at fault.
final class HFBadInputTests: XCTestCase {
    func testMissingShardNamesIndexShardAndTensor() throws {
        let dir = try Fixture.copy("llama")
        let shard = "model-00002-of-00003.safetensors"
        try FileManager.default.removeItem(atPath: dir + "/" + shard)
        assertKVCError(["model.safetensors.index.json", shard, "model.layers."]) { _ = try SmolVLM(directory: dir) }
    }

    func testWrongShapeNamesFileAndTensor() throws {
        let dir = try Fixture.copy("idefics3")
        let tensor = "model.text_model.layers.1.self_attn.k_proj.weight"
        try Fixture.rewrite(dir + "/model.safetensors") { name, dtype, shape, values in
            (name, dtype, name == tensor ? shape.reversed() : shape, values)
        }
        assertKVCError([dir + "/model.safetensors", tensor, "[64, 32]", "expected [32, 64]"]) { _ = try SmolVLM(directory: dir) }
    }

    func testWrongShapeInVisionTowerNamesFileAndTensor() throws {
        let dir = try Fixture.copy("idefics3")
        let tensor = "model.vision_model.embeddings.position_embedding.weight"
        try Fixture.rewrite(dir + "/model.safetensors") { name, dtype, shape, values in
            name == tensor ? (name, dtype, [shape[0] - 1, shape[1]], Array(values.dropLast(shape[1]))) : (name, dtype, shape, values)
        }
        assertKVCError([dir + "/model.safetensors", tensor, "expected [36, 32]"]) { _ = try SmolVLM(directory: dir) }
    }

    func testWrongDTypeNamesFileAndTensor() throws {
        let dir = try Fixture.copy("llama")
        let tensor = "model.norm.weight"
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors.index.json")))
        let shard = try XCTUnwrap(((index as? [String: Any])?["weight_map"] as? [String: String])?[tensor])
        try Fixture.rewrite(dir + "/" + shard) { name, dtype, shape, values in (name, name == tensor ? .i32 : dtype, shape, values) }
        assertKVCError([dir + "/" + shard, tensor, "I32"]) { _ = try SmolVLM(directory: dir) }
    }

    func testMissingTensorNamesTensor() throws {
        let dir = try Fixture.copy("idefics3")
        let tensor = "model.connector.modality_projection.proj.weight"
        try Fixture.rewrite(dir + "/model.safetensors") { name, dtype, shape, values in
            (name == tensor ? "unrelated.weight" : name, dtype, shape, values)
        }
        assertKVCError([tensor, "missing"]) { _ = try SmolVLM(directory: dir) }
    }

    func testUnsupportedArchitectureNamesConfigAndField() throws {
        let dir = try Fixture.copy("llama")
        try Fixture.editConfig(dir) { $0["architectures"] = ["MistralForCausalLM"] }
        assertKVCError([dir + "/config.json", "architectures", "MistralForCausalLM"]) { _ = try SmolVLM(directory: dir) }
    }

    func testUnsupportedRopeScalingNamesField() throws {
        let dir = try Fixture.copy("idefics3")
        try Fixture.editConfig(dir) { config in
            var text = config["text_config"] as! [String: Any]
            text["rope_parameters"] = ["rope_type": "llama3", "rope_theta": 100000.0, "factor": 8.0]
            config["text_config"] = text
        }
        assertKVCError([dir + "/config.json", "text_config.rope_parameters.rope_type", "llama3"]) {
            _ = try SmolVLM(directory: dir)
        }
    }

    func testMissingPreprocessorConfigFallsBackWithWarning() throws {
        let dir = try Fixture.copy("idefics3")
        try FileManager.default.removeItem(atPath: dir + "/preprocessor_config.json")
        var warnings: [String] = []
        let model = try SmolVLM(directory: dir, warn: { warnings.append($0) })
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings.first?.contains("preprocessor_config.json") ?? false, "\(warnings)")
        XCTAssertEqual(model.vision?.processor, .defaults(imageSize: 48))
    }

    func testImageTokenCountMustMatchTheImages() throws {
        let dir = try Fixture.directory("idefics3")
        let model = try SmolVLM(directory: dir)
        let image = try Image.load(path: dir + "/image.png")
        let imageToken = try XCTUnwrap(model.imageTokenId)
        assertKVCError(["8 image tokens", "9 each"]) {
            _ = try ParityDump.run(model: model, tokenIds: [1, 2] + Array(repeating: imageToken, count: 8), images: [image])
        }
        assertKVCError(["9 image tokens", "0 image(s)"]) {
            _ = try ParityDump.run(model: model, tokenIds: Array(repeating: imageToken, count: 9), images: [])
        }
        assertKVCError(["not contiguous"]) {
            _ = try ParityDump.run(model: model, tokenIds: Array(repeating: imageToken, count: 4) + [5]
                                   + Array(repeating: imageToken, count: 5), images: [image])
        }
    }
}
