import Foundation
import KVCBackbone
import KVCCore
import KVCVision
import XCTest
@testable import KVCSmolVLM

/// `tokenizer.json` read into the project's BPE tokenizer gives transformers' token ids, and SmolVLM prompts are
/// built as `Idefics3Processor` builds them.
final class HFTokenizerTests: XCTestCase {
    func testTokenizerJSONEncodesLikeTransformers() throws {
        let dir = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir, warn: { XCTFail("unexpected warning: \($0)") })
        let backbone = try XCTUnwrap(model.backbone, "tokenizer.json was not loaded")
        var checked = 0
        for (key, text) in expected.metadata where key.hasPrefix("tokenizer.") {
            XCTAssertEqual(backbone.encode(text), try expected.ints(key), "\(text.debugDescription)")
            XCTAssertEqual(backbone.tokenizer.decode(try expected.ints(key)), text)
            checked += 1
        }
        XCTAssertEqual(checked, 3)
    }

    /// Older `tokenizer.json` files write merges as "a b" strings instead of [a, b] pairs.
    func testMergesWrittenAsStrings() throws {
        let dir = try Fixture.copy("idefics3")
        try Fixture.editConfig(dir, file: "tokenizer.json") { json in
            var model = json["model"] as! [String: Any]
            model["merges"] = (model["merges"] as! [[String]]).map { $0.joined(separator: " ") }
            json["model"] = model
        }
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let backbone = try XCTUnwrap(SmolVLM(directory: dir).backbone)
        let text = try XCTUnwrap(expected.metadata["tokenizer.0"])
        XCTAssertEqual(backbone.encode(text), try expected.ints("tokenizer.0"))
    }

    /// The processor's ids for the parity prompt (image placeholder expanded, special tokens in the text).
    func testPromptIdsMatchTheProcessor() throws {
        let dir = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir)
        let prompt = try XCTUnwrap(expected.metadata["prompt"])
        XCTAssertEqual(try model.encode(prompt), try expected.ints("input_ids"))
        XCTAssertEqual(SmolVLMPrompt.chat(question: "What is the red shape in 2024?", imageCount: 1), prompt)
    }

    /// Generation from the parity prompt starts with the token transformers ranks first (a clear winner here).
    func testGenerationStartsWithTheReferenceArgmax() throws {
        let dir = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir)
        let logits = try expected.floats("logits")
        let vocab = model.decoder.config.vocabularySize
        let last = Array(logits[(logits.count - vocab)...])
        let sorted = last.sorted(by: >)
        XCTAssertGreaterThan(sorted[0] - sorted[1], 0.05, "reference top-2 too close for a float16-cache check")
        var parameters = GenerationParameters.greedy(maxTokens: 4)
        parameters.stopTokens = []
        let tokens = try model.generate(tokenIds: try expected.ints("input_ids"),
                                        imageInputs: model.imageInputs(for: [Image.load(path: dir + "/image.png")]),
                                        parameters: parameters)
        XCTAssertEqual(tokens.count, 4)
        XCTAssertEqual(tokens.first, last.indices.max { last[$0] < last[$1] })
    }

    func testUnsupportedTokenizerWarnsAndTokenIdsStillWork() throws {
        let dir = try Fixture.copy("idefics3")
        try Fixture.editConfig(dir, file: "tokenizer.json") { json in
            var model = json["model"] as! [String: Any]
            model["type"] = "Unigram"
            json["model"] = model
        }
        var warnings: [String] = []
        let model = try SmolVLM(directory: dir, warn: { warnings.append($0) })
        XCTAssertNil(model.backbone)
        XCTAssertTrue(warnings.contains { $0.contains("tokenizer.json") && $0.contains("model.type") }, "\(warnings)")
        assertKVCError(["tokenizer.json", "--token-ids"]) { _ = try model.encode("hello") }
        let ids = try SafetensorsFile(path: dir + "/expected.safetensors").ints("input_ids")
        XCTAssertEqual(try ParityDump.run(model: model, tokenIds: ids, images: [Image.load(path: dir + "/image.png")]).tokenCount,
                       ids.count)
    }
}
