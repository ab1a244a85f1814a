import Foundation
import KVCBackbone
import KVCCollect
import KVCCore
import KVCVision
import XCTest
@testable import KVCSmolVLM

/// A SmolVLM directory as the toolkit's `VisionLanguageModel` (what kvc-collect runs): the same prompt ids as
/// transformers' processor, the same numbers as the parity dump, the 3x3 grid of its image tokens.
final class SmolVLMVisionLanguageModelTests: XCTestCase {
    func testPrefixAndSuffixAreTheProcessorsPrompt() throws {
        let dir = try Fixture.directory("idefics3")
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let model = try SmolVLM(directory: dir)
        let vlm = try model.visionLanguageModel()
        let image = try Image.load(path: dir + "/image.png")
        let prefix = vlm.prefix(imageEmbeddings: vlm.frontEnd.embed([image]))
        let pieces = prefix.pieces + vlm.suffix(question: "What is the red shape in 2024?")
        // Image positions as the processor writes them: the image token id.
        let imageToken = try XCTUnwrap(model.imageTokenId)
        let ids = pieces.flatMap { piece -> [Int] in
            switch piece {
            case .tokens(let ids): return ids
            case .embeddings(_, let n): return Array(repeating: imageToken, count: n)
            case .layered: XCTFail("a SmolVLM prompt has no learned question prompt"); return []
            }
        }
        let reference = try expected.ints("input_ids")
        XCTAssertEqual(ids, reference)
        XCTAssertEqual(prefix.grids, [ImageGrid(start: reference.firstIndex(of: imageToken)!, rows: 3, cols: 3)])

        // The VLM's forward pass over those pieces is the parity dump's.
        let dump = try ParityDump.run(decoder: vlm.backbone.model, prompt: pieces)
        XCTAssertLessThanOrEqual(maxRelativeError(dump.logits, try expected.floats("logits")), HFParityTests.tolerance)
    }

    func testAnswersThroughTheVisionLanguageModel() throws {
        let dir = try Fixture.directory("idefics3")
        let vlm = try SmolVLM(directory: dir).visionLanguageModel()
        let answer = try vlm.answer(images: [Image.load(path: dir + "/image.png")], question: "What is the red shape?")
        XCTAssertFalse(answer.tokens.isEmpty)
        XCTAssertEqual(vlm.frontEnd.tokensPerImage, 9)
    }

    func testFingerprintFollowsTheWeights() throws {
        let dir = try Fixture.copy("idefics3")
        let before = try SmolVLM.fingerprint(directory: dir)
        XCTAssertEqual(try SmolVLM.fingerprint(directory: dir), before)
        try Fixture.rewrite(dir + "/model.safetensors") { name, dtype, shape, values in
            (name, dtype, shape, name == "model.text_model.norm.weight" ? values.map { $0 * 2 } : values)
        }
        XCTAssertNotEqual(try SmolVLM.fingerprint(directory: dir), before)
    }

    func testTextOnlyDirectoryIsNotAVisionLanguageModel() throws {
        let model = try SmolVLM(directory: try Fixture.directory("llama"))
        assertKVCError(["no vision tower"]) { _ = try model.visionLanguageModel() }
    }
}
