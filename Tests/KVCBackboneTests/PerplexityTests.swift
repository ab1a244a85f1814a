import XCTest
import KVCCore
@testable import KVCBackbone

/// Perplexity on the first 20,000 characters of the GPL-3 text against Hugging Face transformers float32 on the
/// same file (fixture `smollm2-reference.json`): within 2%.
final class PerplexityTests: XCTestCase {
    private let gplPath = "/usr/share/common-licenses/GPL-3"

    func testGPL3PerplexityMatchesFloat32Reference() throws {
        guard let data = FileManager.default.contents(atPath: gplPath), let full = String(data: data, encoding: .utf8) else {
            throw XCTSkip("\(gplPath) is not present on this machine (Debian's base-files ships it)")
        }
        let doc = try TestPaths.json("smollm2-reference.json")
        let anchors = try XCTUnwrap((doc["perplexity"] as? [String: Any])?["hf_float32"] as? [String: Double])
        let backbone = try Backbone(path: TestPaths.realModelPath())
        let text = String(String.UnicodeScalarView(full.unicodeScalars.prefix(20_000)))
        let tokens = backbone.encode(text)
        XCTAssertEqual(tokens.count, 4223, "llama.cpp tokenizes this text to 4,223 tokens")
        for context in [256, 512] {
            let reference = try XCTUnwrap(anchors["\(context)"])
            let result = try Perplexity.evaluate(model: backbone.model, tokens: tokens, context: context)
            print("GPL-3 perplexity at context \(context): \(result.perplexity) (HF float32 \(reference))")
            XCTAssertEqual(result.windows, 4223 / context)
            XCTAssertEqual(result.scoredTokens, result.windows * (context / 2 - 1))
            XCTAssertEqual(result.perplexity, reference, accuracy: 0.02 * reference)
        }
    }

    func testTooShortTextIsAnError() throws {
        let model = try SharedModel.get()
        assertKVCError(try Perplexity.evaluate(model: model, tokens: [1, 2, 3, 4, 5, 6, 7], context: 4),
                       contains: ["at least 8 tokens", "has 7"])
        assertKVCError(try Perplexity.evaluate(model: model, tokens: [Int](repeating: 5, count: 20_000), context: 9000),
                       contains: ["context length 8192"])
    }
}
