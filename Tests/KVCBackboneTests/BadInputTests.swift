import XCTest
import KVCCore
import KVCGGUF
@testable import KVCBackbone

final class BadInputTests: XCTestCase {
    func testMissingTensorIsNamed() throws {
        let path = try SyntheticModel.write(omit: "blk.1.ffn_up.weight")
        defer { try? FileManager.default.removeItem(atPath: path) }
        assertKVCError(try LlamaModel(path: path), contains: ["blk.1.ffn_up.weight", "missing", "[64, 96]"])
    }

    func testWrongShapeNamesTensorAndShapes() throws {
        let path = try SyntheticModel.write(reshape: ("blk.0.attn_k.weight", [64, 48]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        assertKVCError(try LlamaModel(path: path), contains: ["blk.0.attn_k.weight", "[64, 48]", "expected [64, 32]"])
        let norm = try SyntheticModel.write(reshape: ("output_norm.weight", [63]))
        defer { try? FileManager.default.removeItem(atPath: norm) }
        assertKVCError(try LlamaModel(path: norm), contains: ["output_norm.weight", "[63]", "expected [64]"])
    }

    func testPromptLongerThanContextIsAnError() throws {
        let path = try SyntheticModel.write()   // context length 32
        defer { try? FileManager.default.removeItem(atPath: path) }
        let model = try LlamaModel(path: path)
        let cache = model.makeCache()
        assertKVCError(try model.forward(tokens: [Int](repeating: 3, count: 33), cache: cache),
                       contains: ["33", "context length of 32"])
        XCTAssertEqual(cache.length, 0, "a rejected prompt must not touch the cache")
        _ = try model.forward(tokens: [Int](repeating: 3, count: 30), cache: cache)
        assertKVCError(try model.forward(tokens: [1, 2, 3], cache: cache), contains: ["30 cached", "context length of 32"])
    }

    func testTokenOutsideVocabularyIsAnError() throws {
        let path = try SyntheticModel.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let model = try LlamaModel(path: path)
        assertKVCError(try model.forward(tokens: [1, 40], cache: model.makeCache()), contains: ["token id 40", "prompt index 1"])
        assertKVCError(try model.forward(tokens: [-1], cache: model.makeCache()), contains: ["token id -1"])
        assertKVCError(try model.embed([.embeddings([0, 1], count: 1)]), contains: ["2 embedding values", "1 x 64"])
    }

    func testWrongArchitectureAndBadHyperParameters() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("gpt2"))
        let path = NSTemporaryDirectory() + "kvc-arch-\(UUID().uuidString).gguf"
        try w.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        assertKVCError(try LlamaModel(path: path), contains: ["general.architecture", "gpt2", "llama"])

        let c = LlamaConfig(layerCount: 2, hiddenSize: 64, intermediateSize: 96, headCount: 5, kvHeadCount: 2, headDim: 12,
                            vocabularySize: 40, contextLength: 32, ropeBase: 10_000, rmsNormEpsilon: 1e-5)
        assertKVCError(try c.validate(path: "x.gguf"), contains: ["head_count = 5", "must divide"])
    }

    func testGenerationParametersAreValidated() {
        assertKVCError(try GenerationParameters(topP: 0).validate(), contains: ["top-p"])
        assertKVCError(try GenerationParameters(temperature: -1).validate(), contains: ["temperature"])
        assertKVCError(try GenerationParameters(maxTokens: -2).validate(), contains: ["max tokens"])
    }
}
