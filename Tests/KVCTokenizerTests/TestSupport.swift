import Foundation
import KVCCore
import KVCGGUF
import XCTest
@testable import KVCTokenizer

/// The SmolLM2 tokenizer built from the real GGUF file's metadata, loaded once for all tests.
enum SmolLM2 {
    /// `$KVC_ASSETS`, else `assets/` at the package root (found from this file's path).
    static var ggufPath: String {
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty {
            return env + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        }
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return packageRoot.appendingPathComponent("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    private static let loaded: Result<(BPETokenizer, GGUFFile), Error> = Result {
        let file = try GGUFFile(path: ggufPath)
        let tokenizer = try BPETokenizer(
            tokens: try file.stringArray("tokenizer.ggml.tokens"),
            merges: try file.stringArray("tokenizer.ggml.merges"),
            tokenTypes: try file.intArray("tokenizer.ggml.token_type").map { Int32(truncatingIfNeeded: $0) },
            preTokenizer: try file.string("tokenizer.ggml.pre"),
            bosTokenId: try? file.int("tokenizer.ggml.bos_token_id"),
            eosTokenId: try? file.int("tokenizer.ggml.eos_token_id"),
            padTokenId: try? file.int("tokenizer.ggml.padding_token_id"),
            unknownTokenId: try? file.int("tokenizer.ggml.unknown_token_id"))
        return (tokenizer, file)
    }

    /// Skips the calling test, with a message saying how to get the file, when the asset is missing.
    static func tokenizer() throws -> BPETokenizer { try loadedOrSkip().0 }
    static func file() throws -> GGUFFile { try loadedOrSkip().1 }

    private static func loadedOrSkip() throws -> (BPETokenizer, GGUFFile) {
        guard FileManager.default.fileExists(atPath: ggufPath) else {
            throw XCTSkip("\(ggufPath) not found: run scripts/setup.sh (or set KVC_ASSETS) to fetch the model")
        }
        return try loaded.get()
    }
}

/// A committed fixture: strings and the token ids a reference implementation gave for them.
struct TokenizerFixture: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int]
    }
    let source: String
    let cases: [Case]

    static func load(_ name: String) throws -> TokenizerFixture {
        guard let url = Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures") else {
            throw KVCError("test fixture Fixtures/\(name).json is missing from the test bundle")
        }
        return try JSONDecoder().decode(TokenizerFixture.self, from: Data(contentsOf: url))
    }
}

/// A small vocabulary over the full byte alphabet, for tests that must not depend on the model file.
enum ToyVocabulary {
    /// All 256 byte tokens first, then the merged tokens, then the given specials.
    static func make(merges: [String], specials: [(String, GGUFTokenType)] = [],
                     preTokenizer: String = "smollm") throws -> BPETokenizer {
        var tokens = (0..<256).map { String(ByteLevelAlphabet.scalarForByte[$0]) }
        for merge in merges where !tokens.contains(merge.replacingOccurrences(of: " ", with: "")) {
            tokens.append(merge.replacingOccurrences(of: " ", with: ""))
        }
        var types = [Int32](repeating: GGUFTokenType.normal.rawValue, count: tokens.count)
        for (text, type) in specials { tokens.append(text); types.append(type.rawValue) }
        return try BPETokenizer(tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: preTokenizer,
                                bosTokenId: nil, eosTokenId: nil, padTokenId: nil, unknownTokenId: nil)
    }
}
