import XCTest
import KVCCore
import KVCTokenizer
@testable import KVCBackbone

final class GenerationTests: XCTestCase {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var shared: Backbone?
    private func backbone() throws -> Backbone {
        Self.lock.lock(); defer { Self.lock.unlock() }
        if let b = Self.shared { return b }
        let b = try Backbone(path: TestPaths.realModelPath())
        Self.shared = b
        return b
    }

    /// The tokenizer built from the GGUF metadata gives llama.cpp's ids, and greedy generation from text
    /// reproduces the numpy reference's continuation.
    func testGreedyFromTextMatchesReference() throws {
        let b = try backbone()
        let doc = try TestPaths.json("llama_reference.json")
        let cases = try XCTUnwrap(doc["cases"] as? [[String: Any]])
        for c in cases {
            let text = try XCTUnwrap(c["text"] as? String)
            XCTAssertEqual(b.encode(text), c["ids"] as? [Int], "token ids of \(text.debugDescription)")
        }
        let first = cases[0]
        let expected = try XCTUnwrap(first["greedy_continuation"] as? [Int])
        var streamed = ""
        let result = try b.generate(text: "The capital of France is", parameters: .greedy(maxTokens: expected.count)) { _, piece in
            streamed += piece
            return true
        }
        XCTAssertEqual(result.tokens, expected)
        XCTAssertEqual(result.text, b.tokenizer.decode(expected))
        XCTAssertEqual(streamed, result.text)
        XCTAssertEqual(result.stopReason, .maxTokens)
        XCTAssertTrue(result.text.hasPrefix(" Paris"))
    }

    /// A chat turn ends with <|im_end|>, which is not part of the output.
    func testChatStopsAtEndOfTurn() throws {
        let b = try backbone()
        let ids = b.encodeChat(user: "Say hello.")
        XCTAssertEqual(b.tokenizer.decode(Array(ids.suffix(4))), "<|im_start|>assistant\n")
        let result = try b.generate(prompt: [.tokens(ids)], parameters: .greedy(maxTokens: 200))
        XCTAssertEqual(result.stopReason, .stopToken, "generated: \(result.text)")
        XCTAssertFalse(result.tokens.contains(b.tokenizer.endOfTurnTokenId ?? -1))
        XCTAssertFalse(result.text.isEmpty)
    }

    /// Sampling is deterministic under a seed and differs between seeds; the callback can stop generation.
    func testSampledGenerationIsSeeded() throws {
        let b = try backbone()
        let p = GenerationParameters(maxTokens: 16, temperature: 1.0, topK: 0, topP: 1, seed: 11)
        let a1 = try b.generate(text: "Once upon a time", parameters: p)
        let a2 = try b.generate(text: "Once upon a time", parameters: p)
        var other = p
        other.seed = 12
        let c = try b.generate(text: "Once upon a time", parameters: other)
        XCTAssertEqual(a1.tokens, a2.tokens)
        XCTAssertNotEqual(a1.tokens, c.tokens)
        var seen = 0
        let stopped = try b.generate(text: "Once upon a time", parameters: p) { _, _ in seen += 1; return seen < 3 }
        XCTAssertEqual(stopped.tokens.count, 3)
        XCTAssertEqual(stopped.stopReason, .callback)
    }

    /// Image-token style prompts: caller-supplied embeddings at a position give the same result as the tokens they
    /// copy, and the prompt's length is checked against the context.
    func testEmbeddingPiecesEqualTokens() throws {
        let b = try backbone()
        let ids = [504, 3575, 282, 4649, 314]
        let middle = try b.model.embed(tokens: [3575, 282])
        let mixed = try b.model.forward([.tokens([504]), .embeddings(middle, count: 2), .tokens([4649, 314])],
                                        cache: b.model.makeCache())
        let plain = try b.model.forward(tokens: ids, cache: b.model.makeCache())
        XCTAssertEqual(mixed, plain)
        let tooLong = [PromptPiece.tokens([Int](repeating: 216, count: 8000)), .embeddings(middle, count: 2),
                       .tokens([Int](repeating: 216, count: 200))]
        assertKVCError(try b.generate(prompt: tooLong), contains: ["8202 tokens", "context length of 8192"])
    }
}

final class SamplerTests: XCTestCase {
    func testGreedyAndTopOneAreArgmax() {
        let logits: [Float] = [0.1, 3, -2, 2.9, 0]
        var greedy = Sampler(.greedy())
        XCTAssertEqual(greedy.next(logits), 1)
        var topOne = Sampler(GenerationParameters(temperature: 5, topK: 1, seed: 1))
        for _ in 0..<20 { XCTAssertEqual(topOne.next(logits), 1) }
        var tinyP = Sampler(GenerationParameters(temperature: 1, topK: 0, topP: 1e-6, seed: 2))
        for _ in 0..<20 { XCTAssertEqual(tinyP.next(logits), 1) }
    }

    /// Frequencies follow softmax(logits / T) restricted to the top k.
    func testSampledFrequenciesFollowSoftmax() {
        let logits: [Float] = [1, 2, 0.5, 3, -1, 2.5]
        let temperature: Float = 0.8
        var sampler = Sampler(GenerationParameters(temperature: temperature, topK: 4, topP: 1, seed: 9))
        var counts = [Int](repeating: 0, count: logits.count)
        let n = 40_000
        for _ in 0..<n { counts[sampler.next(logits)] += 1 }
        let top4 = [3, 5, 1, 0]
        let weights = top4.map { exp(Double(logits[$0] / temperature)) }
        let total = weights.reduce(0, +)
        for (i, id) in top4.enumerated() {
            XCTAssertEqual(Double(counts[id]) / Double(n), weights[i] / total, accuracy: 0.01, "token \(id)")
        }
        XCTAssertEqual(counts[2] + counts[4], 0, "tokens outside the top 4 are never drawn")
    }

    func testTopPKeepsSmallestNucleus() {
        // Probabilities at T=1: about 0.64, 0.24, 0.09, 0.03: top-p 0.8 keeps the first two.
        let logits: [Float] = [3, 2, 1, 0]
        var sampler = Sampler(GenerationParameters(temperature: 1, topK: 0, topP: 0.8, seed: 4))
        var seen = Set<Int>()
        for _ in 0..<2000 { seen.insert(sampler.next(logits)) }
        XCTAssertEqual(seen, [0, 1])
    }

    func testTopIndices() {
        var rng = SeededRandom(seed: 1)
        let x = (0..<5000).map { _ in rng.nextNormal() }
        let expected = Array(x.indices.sorted { x[$0] > x[$1] }.prefix(40))
        x.withUnsafeBufferPointer { XCTAssertEqual(Sampler.topIndices($0, 40), expected) }
    }
}
