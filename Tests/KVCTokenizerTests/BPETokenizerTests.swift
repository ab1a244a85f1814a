import KVCCore
import XCTest
@testable import KVCTokenizer

/// Merge order, special tokens, decoding and bad metadata on a toy vocabulary (no model file needed).
final class BPETokenizerTests: XCTestCase {
    private func id(_ tokenizer: BPETokenizer, _ text: String) -> Int {
        tokenizer.tokenId(ByteLevelAlphabet.encode(Array(text.utf8)))!
    }

    func testLowestRankMergesFirst() throws {
        // "abc": rank 0 is "b c", so "bc" forms before "a b" can; then "a bc".
        let tokenizer = try ToyVocabulary.make(merges: ["b c", "a b", "a bc"])
        XCTAssertEqual(tokenizer.encode("abc"), [id(tokenizer, "abc")])
        XCTAssertEqual(tokenizer.encode("ab"), [id(tokenizer, "ab")])
        XCTAssertEqual(tokenizer.encode("abx"), [id(tokenizer, "ab"), id(tokenizer, "x")])
    }

    func testEqualRanksMergeLeftmostFirst() throws {
        // "aaa" with only "a a": the left pair merges, leaving "aa a".
        let tokenizer = try ToyVocabulary.make(merges: ["a a"])
        XCTAssertEqual(tokenizer.encode("aaa"), [id(tokenizer, "aa"), id(tokenizer, "a")])
        XCTAssertEqual(tokenizer.encode("aaaa"), [id(tokenizer, "aa"), id(tokenizer, "aa")])
    }

    func testLongWordsMergeLikeShortOnes() throws {
        // Words over 32 bytes take the heap path; a word of n copies must give the same tokens as merging by hand.
        let tokenizer = try ToyVocabulary.make(merges: ["a a", "aa aa", "aaaa aaaa", "b a"])
        for n in [31, 32, 33, 40, 67, 100] {
            let word = String(repeating: "a", count: n)
            // Greedy by hand: 8s, then at most one 4, one 2, one 1 (binary decomposition, largest first).
            var expected: [Int] = [], left = n
            for size in [8, 4, 2, 1] {
                while left >= size && (size == 8 || left < size * 2) {
                    expected.append(id(tokenizer, String(repeating: "a", count: size))); left -= size
                }
            }
            XCTAssertEqual(tokenizer.encode(word), expected, "n = \(n)")
        }
        // "b" before a long run of "a": "b a" (rank 3) loses to "a a" (rank 0) everywhere.
        let ids = tokenizer.encode("b" + String(repeating: "a", count: 40))
        XCTAssertEqual(ids.first, id(tokenizer, "b"))
    }

    func testBytesWithoutMergesStayBytes() throws {
        let tokenizer = try ToyVocabulary.make(merges: [])
        let text = "é😀\n"
        XCTAssertEqual(tokenizer.encode(text).count, text.utf8.count)
        XCTAssertEqual(tokenizer.decode(tokenizer.encode(text)), text)
    }

    func testSpecialTokensAreMatchedWholeOnlyWhenParsed() throws {
        let tokenizer = try ToyVocabulary.make(merges: ["a b"], specials: [("<|im_end|>", .control), ("<|im_end|>x", .control),
                                                                            ("[[user]]", .userDefined)])
        let end = tokenizer.tokenId("<|im_end|>")!, endX = tokenizer.tokenId("<|im_end|>x")!
        let user = tokenizer.tokenId("[[user]]")!
        XCTAssertEqual(tokenizer.endOfTurnTokenId, end)
        XCTAssertEqual(tokenizer.encode("ab<|im_end|>ab"), [id(tokenizer, "ab"), end, id(tokenizer, "ab")])
        // Longest special first.
        XCTAssertEqual(tokenizer.encode("<|im_end|>x<|im_end|>"), [endX, end])
        // Not parsed: the text is tokenized as text, and decodes back to itself.
        let plain = tokenizer.encode("<|im_end|>", parseSpecial: false)
        XCTAssertFalse(plain.contains(end))
        XCTAssertEqual(tokenizer.decode(plain), "<|im_end|>")
        // User-defined tokens are matched either way (llama.cpp's rule).
        XCTAssertEqual(tokenizer.encode("[[user]]", parseSpecial: false), [user])
        XCTAssertTrue(tokenizer.isControl(end))
        XCTAssertFalse(tokenizer.isControl(user))
        XCTAssertEqual(tokenizer.decode([end, user]), "<|im_end|>[[user]]")
    }

    func testDecodeSkipsIdsOutsideTheVocabulary() throws {
        let tokenizer = try ToyVocabulary.make(merges: [])
        XCTAssertEqual(tokenizer.decode([-1, id(tokenizer, "h"), 1_000_000, id(tokenizer, "i")]), "hi")
    }

    func testInconsistentMetadataIsAClearError() throws {
        let bytes = (0..<256).map { String(ByteLevelAlphabet.scalarForByte[$0]) }
        func make(tokens: [String] = bytes, merges: [String] = [], types: [Int32]? = nil, pre: String = "smollm",
                  eos: Int? = nil) throws -> BPETokenizer {
            try BPETokenizer(tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: pre,
                             bosTokenId: nil, eosTokenId: eos, padTokenId: nil, unknownTokenId: nil)
        }
        func assertError(_ expression: @autoclosure () throws -> BPETokenizer, mentions fragment: String,
                         line: UInt = #line) {
            XCTAssertThrowsError(try expression(), line: line) { error in
                XCTAssertTrue("\(error)".contains(fragment), "\(error) should mention \(fragment)", line: line)
            }
        }
        assertError(try make(tokens: []), mentions: "tokenizer.ggml.tokens")
        assertError(try make(types: [1, 1]), mentions: "tokenizer.ggml.token_type")
        assertError(try make(merges: ["a b"]), mentions: "tokenizer.ggml.merges[0]")
        assertError(try make(merges: ["ab"]), mentions: "tokenizer.ggml.merges[0]")
        assertError(try make(pre: "unknown-pre"), mentions: "unknown-pre")
        assertError(try make(eos: 256), mentions: "eos_token_id")
        assertError(try make(tokens: Array(bytes.dropFirst(40))), mentions: "no token for byte")
        XCTAssertNoThrow(try make())
    }
}
