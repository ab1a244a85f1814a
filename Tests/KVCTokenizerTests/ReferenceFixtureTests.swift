import XCTest
@testable import KVCTokenizer

/// Token ids of the real SmolLM2 vocabulary against two independent implementations: llama.cpp and Hugging Face
/// `tokenizers` configured with the file's pre-tokenizer (see Fixtures/README.md).
final class ReferenceFixtureTests: XCTestCase {
    func testMatchesLlamaCpp() throws {
        try assertMatches(fixture: "smollm2-tokenizer-llamacpp", expectedCount: 31)
    }

    func testMatchesHuggingFaceTokenizers() throws {
        try assertMatches(fixture: "smollm2-tokenizer-hf", expectedCount: 156)
    }

    func testMatchesHuggingFaceOnThePerplexityText() throws {
        try assertMatches(fixture: "smollm2-tokenizer-hf-gpl3", expectedCount: 1)
    }

    private func assertMatches(fixture name: String, expectedCount: Int) throws {
        let tokenizer = try SmolLM2.tokenizer()
        let fixture = try TokenizerFixture.load(name)
        XCTAssertEqual(fixture.cases.count, expectedCount, "fixture \(name) is incomplete")
        var mismatches = 0
        for item in fixture.cases {
            let ids = tokenizer.encode(item.text, parseSpecial: true)
            if ids != item.ids {
                mismatches += 1
                let firstDifference = zip(ids, item.ids).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(ids.count, item.ids.count)
                XCTFail("""
                    \(name): \(item.text.debugDescription.prefix(200)) differs at token \(firstDifference)
                      ours:      \(ids.prefix(firstDifference + 8))
                      reference: \(item.ids.prefix(firstDifference + 8))
                    """)
            }
            XCTAssertEqual(Array(tokenizer.decode(item.ids).utf8), Array(item.text.utf8), "decoding the reference ids of \(item.text.debugDescription)")
        }
        print("\(name): \(fixture.cases.count - mismatches)/\(fixture.cases.count) cases equal")
    }
}
