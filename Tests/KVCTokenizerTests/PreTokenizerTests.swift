import XCTest
@testable import KVCTokenizer

/// The word split on hand-worked examples of the GPT-2 pattern and the digit split (no model file needed).
final class PreTokenizerTests: XCTestCase {
    private func words(_ text: String, _ kind: PreTokenizer = .isolatedDigitsThenGPT2) -> [String] {
        let bytes = Array(text.utf8)
        var out: [String] = []
        bytes.withUnsafeBufferPointer { buffer in
            kind.forEachWord(in: buffer, range: 0..<buffer.count) { out.append(String(decoding: buffer[$0], as: UTF8.self)) }
        }
        return out
    }

    func testLettersTakeOneLeadingSpace() {
        XCTAssertEqual(words("Hello world"), ["Hello", " world"])
        XCTAssertEqual(words(" leading"), [" leading"])
        XCTAssertEqual(words("Café naïve"), ["Café", " naïve"])
    }

    func testWhitespaceRunLeavesItsLastSpaceToTheNextWord() {
        XCTAssertEqual(words("hello  world"), ["hello", " ", " world"])
        XCTAssertEqual(words("   three"), ["  ", " three"])
        XCTAssertEqual(words("trailing "), ["trailing", " "])
        XCTAssertEqual(words("a\n\nb"), ["a", "\n", "\n", "b"])
        // A tab cannot be the optional prefix, so it stands alone.
        XCTAssertEqual(words(" \tfoo"), [" ", "\t", "foo"])
        XCTAssertEqual(words("x \n y"), ["x", " \n", " y"])
    }

    func testContractionsAreCaseSensitive() {
        XCTAssertEqual(words("I'm you'll they'd"), ["I", "'m", " you", "'ll", " they", "'d"])
        XCTAssertEqual(words("DON'T"), ["DON", "'", "T"])
    }

    func testPunctuationRunsTakeOneLeadingSpace() {
        XCTAssertEqual(words("f(x):"), ["f", "(", "x", "):"])
        XCTAssertEqual(words("a && b"), ["a", " &&", " b"])
        XCTAssertEqual(words("?'s"), ["?'", "s"])
    }

    func testDigitsAreIsolatedAndSpacesBeforeThemStayWhole() {
        XCTAssertEqual(words("year 2026"), ["year", " ", "2", "0", "2", "6"])
        XCTAssertEqual(words("x  12"), ["x", "  ", "1", "2"])
        XCTAssertEqual(words("3.14"), ["3", ".", "1", "4"])
        XCTAssertEqual(words("a1b"), ["a", "1", "b"])
        // Other number characters (\p{N}: superscripts, fractions, other scripts' digits) are digits too.
        XCTAssertEqual(words("x²½٣"), ["x", "²", "½", "٣"])
    }

    func testPlainGPT2KeepsNumbersTogether() {
        XCTAssertEqual(words("year 2026", .gpt2), ["year", " 2026"])
        XCTAssertEqual(words("x  12", .gpt2), ["x", " ", " 12"])
    }

    func testExoticWhitespaceIsWhitespace() {
        XCTAssertEqual(words("a\u{00A0}b"), ["a", "\u{00A0}", "b"])
        XCTAssertEqual(words("a\u{3000}\u{3000}b"), ["a", "\u{3000}", "\u{3000}", "b"])
    }

    func testWordsTileTheInput() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("ab 1\t\n'.é日😀\u{00A0}")
        for _ in 0..<200 {
            let text = String((0..<Int.random(in: 0...20, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
            XCTAssertEqual(words(text).joined(), text)
            XCTAssertFalse(words(text).contains(""), "empty word in \(text.debugDescription)")
        }
    }

    func testUnknownPreTokenizerNameIsAnError() {
        XCTAssertThrowsError(try PreTokenizer(ggufName: "llama3")) { error in
            XCTAssertTrue("\(error)".contains("llama3"), "\(error)")
        }
        XCTAssertEqual(try PreTokenizer(ggufName: "smollm"), .isolatedDigitsThenGPT2)
    }
}
