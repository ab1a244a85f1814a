import KVCCore
import XCTest
@testable import KVCTokenizer

/// Properties of the real SmolLM2 tokenizer: round trips, the two merge paths, streaming, chat markup, speed.
final class RealVocabularyTests: XCTestCase {
    /// Seeded random text mixing ASCII, accents, CJK, emoji (with joiners and modifiers), whitespace and digits.
    private static func randomText(_ rng: inout SeededRandom, maxScalars: Int) -> String {
        let pools: [[Unicode.Scalar]] = [
            Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".unicodeScalars),
            Array("0123456789".unicodeScalars), Array(" \t\n\r \u{00A0}\u{3000}\u{2028}".unicodeScalars),
            Array(".,;:!?'\"()[]{}<>-_=+*/\\|&^%$#@~`".unicodeScalars),
            Array("éèêëàâäôöûüçñßÉÅØæœ\u{0301}\u{0308}".unicodeScalars),
            Array("日本語中文한국어テキスト的一是".unicodeScalars),
            Array("😀👍🏽🎉❤\u{FE0F}🇫🇷\u{200D}👨👩".unicodeScalars),
            Array("<|im_start|><|im_end|>".unicodeScalars),
        ]
        var view = String.UnicodeScalarView()
        let count = rng.nextInt(below: maxScalars + 1)
        var pool = pools[0]
        for _ in 0..<count {
            if rng.nextInt(below: 4) == 0 { pool = pools[rng.nextInt(below: pools.count)] }
            // Now and then any scalar at all, to reach the corners of the Unicode tables.
            if rng.nextInt(below: 50) == 0, let any = Unicode.Scalar(UInt32(rng.nextInt(below: 0x30000))) {
                view.append(any)
            } else {
                view.append(pool[rng.nextInt(below: pool.count)])
            }
        }
        return String(view)
    }

    func testRoundTripOnSeededRandomText() throws {
        let tokenizer = try SmolLM2.tokenizer()
        var rng = SeededRandom(seed: 4)
        for trial in 0..<2000 {
            let text = Self.randomText(&rng, maxScalars: trial < 1000 ? 12 : 120)
            for parseSpecial in [true, false] {
                let ids = tokenizer.encode(text, parseSpecial: parseSpecial)
                XCTAssertTrue(ids.allSatisfy { $0 >= 0 && $0 < tokenizer.vocabularySize })
                // Bytes, not String ==, which would accept a canonically equivalent but different text.
                XCTAssertEqual(Array(tokenizer.decode(ids).utf8), Array(text.utf8), "round trip of \(text.debugDescription)")
                if !parseSpecial {
                    XCTAssertFalse(ids.contains { tokenizer.isControl($0) }, "control token from unparsed \(text.debugDescription)")
                }
            }
        }
    }

    func testHeapAndRescanMergesAgree() throws {
        let tokenizer = try SmolLM2.tokenizer()
        var rng = SeededRandom(seed: 11)
        for _ in 0..<300 {
            // One pre-token-like word: letters with an optional leading space, or a whitespace/punctuation run.
            let text = Self.randomText(&rng, maxScalars: 80)
            let bytes = Array(text.utf8)
            guard bytes.count > 1 else { continue }
            var rescanned = bytes.map { tokenizer.byteTokens[Int($0)] }
            tokenizer.merges.applyByRescanning(&rescanned)
            var heapSymbols = bytes.map { tokenizer.byteTokens[Int($0)] }
            var heapIds: [Int] = []
            tokenizer.merges.applyWithHeap(&heapSymbols, appendingTo: &heapIds)
            XCTAssertEqual(heapIds, rescanned.map(Int.init), text.debugDescription)
        }
    }

    func testStreamingDecoderNeverSplitsACharacter() throws {
        let tokenizer = try SmolLM2.tokenizer()
        let text = "Emoji 😀👍🏽🇫🇷, 日本語のテキスト, naïve <|im_end|> done"
        let ids = tokenizer.encode(text)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var pieces: [String] = []
        for id in ids { pieces.append(decoder.push(id)) }
        pieces.append(decoder.finish())
        XCTAssertEqual(Array(pieces.joined().utf8), Array(text.utf8))
        XCTAssertFalse(pieces.contains { $0.unicodeScalars.contains("\u{FFFD}") }, "\(pieces)")
        // The emoji spans several byte tokens, so some pushes must have held bytes back.
        XCTAssertTrue(pieces.contains(""), "expected a held-back partial character")
    }

    func testStreamingDecoderReleasesMalformedBytes() {
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0xF0, 0x9F]), 1)
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0xF0, 0x9F, 0x98, 0x80]), 5)
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x80, 0x80, 0x80, 0x80]), 4)
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0xFF]), 1)
        XCTAssertEqual(StreamingDecoder.completePrefixLength([]), 0)
    }

    func testSpecialIdsOfTheFile() throws {
        let tokenizer = try SmolLM2.tokenizer()
        XCTAssertEqual(tokenizer.vocabularySize, 49152)
        XCTAssertEqual(tokenizer.tokenId("<|im_start|>"), 1)
        XCTAssertEqual(tokenizer.endOfTurnTokenId, 2)
        XCTAssertEqual(tokenizer.eosTokenId, 2)
        XCTAssertEqual(tokenizer.encode("<|im_start|>", parseSpecial: true), [1])
        XCTAssertGreaterThan(tokenizer.encode("<|im_start|>", parseSpecial: false).count, 1)
    }

    func testChatTemplateFollowsTheFileTemplate() throws {
        let file = try SmolLM2.file()
        let tokenizer = try SmolLM2.tokenizer()
        let template = try XCTUnwrap(ChatTemplate.fromGGUF(chatTemplate: try file.string("tokenizer.chat_template")))
        XCTAssertEqual(template, .smolLM2)

        // Written out by hand from the Jinja source: default system turn, then each message, then the prompt.
        let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "<|im_start|>user\nWhat is the red shape?<|im_end|>\n<|im_start|>assistant\n"
        XCTAssertEqual(template.render([.user("What is the red shape?")]), expected)
        // With a system message of its own, no default is added.
        XCTAssertEqual(template.render([.system("Be brief."), .user("Hi")], addGenerationPrompt: false),
                       "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")

        XCTAssertEqual(template.render([]), "<|im_start|>assistant\n")

        // The llama.cpp fixture's chat case, which starts after the system turn.
        let ids = tokenizer.encodeChat([.user("What is the red shape?")])
        let llama = try TokenizerFixture.load("smollm2-tokenizer-llamacpp").cases
        let chatCase = try XCTUnwrap(llama.first { $0.text.hasPrefix("<|im_start|>user") })
        XCTAssertTrue(ids.reversed().starts(with: chatCase.ids.reversed()), "\(ids) should end with \(chatCase.ids)")
        XCTAssertEqual(ids.first, 1)
        XCTAssertEqual(ids.filter { $0 == tokenizer.endOfTurnTokenId }.count, 2)
    }

    func testNonChatMLTemplatesAreNotRecognised() {
        XCTAssertNil(ChatTemplate.fromGGUF(chatTemplate: "{{ bos_token }}[INST] {{ message }} [/INST]"))
        XCTAssertEqual(ChatTemplate.fromGGUF(chatTemplate: "{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>'}}"),
                       .chatML(defaultSystemPrompt: nil))
        XCTAssertEqual(ChatTemplate.fromGGUF(chatTemplate: "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"),
                       .chatML(defaultSystemPrompt: nil))
        XCTAssertEqual(ChatTemplate.fromGGUF(chatTemplate: "{{ '<|im_start|>system\\nYou\\'re kind.<|im_end|>\\n' }}"),
                       .chatML(defaultSystemPrompt: "You're kind."))
    }

    /// Prints encode throughput (a figure for the report, not an assertion on time).
    func testEncodeThroughputOnGPL3() throws {
        let tokenizer = try SmolLM2.tokenizer()
        let path = "/usr/share/common-licenses/GPL-3"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw XCTSkip("\(path) not found (Debian's base-files provides it)")
        }
        // Fresh tokenizer so the word cache starts cold, as in a run that tokenizes the file once.
        let file = try SmolLM2.file()
        var start = DispatchTime.now().uptimeNanoseconds
        let cold = try BPETokenizer(
            tokens: try file.stringArray("tokenizer.ggml.tokens"), merges: try file.stringArray("tokenizer.ggml.merges"),
            tokenTypes: try file.intArray("tokenizer.ggml.token_type").map { Int32(truncatingIfNeeded: $0) },
            preTokenizer: try file.string("tokenizer.ggml.pre"), bosTokenId: 1, eosTokenId: 2, padTokenId: 2,
            unknownTokenId: 0)
        let loadSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        start = DispatchTime.now().uptimeNanoseconds
        let ids = cold.encode(text)
        let coldSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        start = DispatchTime.now().uptimeNanoseconds
        let again = cold.encode(text)
        let warmSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        XCTAssertEqual(ids, again)
        XCTAssertEqual(Array(tokenizer.decode(ids).utf8), Array(text.utf8))
        print(String(format: "tokenizer from GGUF metadata (reading the arrays included): %.0f ms", loadSeconds * 1e3))
        print(String(format: "encode GPL-3 (%d bytes, %d tokens): cold cache %.1f ms = %.0f tokens/s, warm cache %.1f ms = %.0f tokens/s",
                     text.utf8.count, ids.count, coldSeconds * 1e3, Double(ids.count) / coldSeconds,
                     warmSeconds * 1e3, Double(ids.count) / warmSeconds))
    }
}
