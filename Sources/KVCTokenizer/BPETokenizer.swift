import Foundation
import KVCCore

/// GGUF's `tokenizer.ggml.token_type` values.
public enum GGUFTokenType: Int32, Sendable {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// A byte-level BPE tokenizer (GPT-2 family) built from GGUF tokenizer metadata.
///
/// Encoding: special tokens are cut out of the text first, the rest is split into words by the file's
/// pre-tokenizer, and each word's UTF-8 bytes are merged by rank. Decoding concatenates the tokens' bytes,
/// so `decode(encode(s)) == s` for every string (with `parseSpecial`, a special token's text in `s` comes
/// back as the same text).
///
/// Thread-safe: the only mutable state is a word cache behind a lock.
public final class BPETokenizer: @unchecked Sendable {
    public let vocabularySize: Int
    public let preTokenizer: PreTokenizer
    public let bosTokenId: Int?
    public let eosTokenId: Int?
    public let padTokenId: Int?
    public let unknownTokenId: Int?
    /// ChatML's end of a turn, `<|im_end|>`, if the vocabulary has it: generation stops there.
    public let endOfTurnTokenId: Int?

    private let tokenTexts: [String]
    private let tokenIdForText: [String: Int]
    /// What each token decodes to: byte-level tokens their bytes, special tokens their text as UTF-8.
    private let tokenBytes: [[UInt8]]
    private let tokenTypes: [GGUFTokenType]
    /// The single-byte token of each byte value: where every word's merging starts.
    let byteTokens: [Int32]
    let merges: BPEMerges
    /// Tokens matched as whole units in the text, longest first (llama.cpp's order).
    private let specialTokens: [SpecialToken]

    private let cacheLock = NSLock()
    private var wordCache: [[UInt8]: [Int]] = [:]
    private static let wordCacheLimit = 100_000

    /// - Parameters:
    ///   - tokens: `tokenizer.ggml.tokens`, in the byte-level spelling ("Ġthe").
    ///   - merges: `tokenizer.ggml.merges`, "left right", best first.
    ///   - tokenTypes: `tokenizer.ggml.token_type`; control and user-defined tokens are matched whole in the
    ///     text. Without it no token is special.
    ///   - preTokenizer: `tokenizer.ggml.pre`, e.g. "smollm".
    /// - Throws: `KVCError` naming the metadata key when the vocabulary, merges, types or ids are inconsistent.
    public init(tokens: [String], merges: [String], tokenTypes: [Int32]?, preTokenizer: String,
                bosTokenId: Int?, eosTokenId: Int?, padTokenId: Int?, unknownTokenId: Int?) throws {
        guard !tokens.isEmpty else { throw KVCError("tokenizer.ggml.tokens: the vocabulary is empty") }
        guard tokens.count < Int(Int32.max) else {
            throw KVCError("tokenizer.ggml.tokens: \(tokens.count) tokens is more than this tokenizer supports")
        }
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw KVCError("tokenizer.ggml.token_type: \(tokenTypes.count) entries, expected one per token (\(tokens.count))")
        }
        for (key, id) in [("bos_token_id", bosTokenId), ("eos_token_id", eosTokenId),
                          ("padding_token_id", padTokenId), ("unknown_token_id", unknownTokenId)] {
            if let id, !(0..<tokens.count).contains(id) {
                throw KVCError("tokenizer.ggml.\(key): \(id) is outside the vocabulary of \(tokens.count) tokens")
            }
        }
        self.preTokenizer = try PreTokenizer(ggufName: preTokenizer)
        vocabularySize = tokens.count
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.padTokenId = padTokenId
        self.unknownTokenId = unknownTokenId
        tokenTexts = tokens

        var idForText = [String: Int](minimumCapacity: tokens.count)
        for (id, text) in tokens.enumerated() where idForText[text] == nil { idForText[text] = id }
        tokenIdForText = idForText
        endOfTurnTokenId = idForText["<|im_end|>"]

        let types = tokenTypes.map { $0.map { GGUFTokenType(rawValue: $0) ?? .undefined } }
            ?? [GGUFTokenType](repeating: .normal, count: tokens.count)
        self.tokenTypes = types

        tokenBytes = zip(tokens, types).map { text, type in
            switch type {
            case .control, .userDefined, .unknown: return Array(text.utf8)
            default: return ByteLevelAlphabet.decode(text) ?? Array(text.utf8)
            }
        }

        var byteTokens = [Int32]()
        for byte in 0..<256 {
            let spelling = String(ByteLevelAlphabet.scalarForByte[byte])
            guard let id = idForText[spelling] ?? unknownTokenId else {
                throw KVCError("tokenizer.ggml.tokens: no token for byte 0x\(String(byte, radix: 16)) "
                    + "(\"\(spelling)\"), which byte-level BPE needs, and no unknown token to stand in")
            }
            byteTokens.append(Int32(id))
        }
        self.byteTokens = byteTokens
        self.merges = try BPEMerges(merges: merges, tokenIdForText: idForText)

        specialTokens = types.indices.compactMap { id -> SpecialToken? in
            let type = types[id]
            guard type == .control || type == .userDefined || type == .unknown, !tokens[id].isEmpty else { return nil }
            return SpecialToken(id: id, bytes: Array(tokens[id].utf8), matchedWithoutParseSpecial: type == .userDefined)
        }.sorted { ($0.bytes.count, -$0.id) > ($1.bytes.count, -$1.id) }
    }

    // MARK: - Encoding

    /// The token ids of `text`, without BOS.
    /// - Parameter parseSpecial: match control tokens such as `<|im_start|>` written in the text (user-defined
    ///   tokens are always matched, as in llama.cpp); when false their text is tokenized like any other.
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int] {
        let bytes = Array(text.utf8)
        var out = [Int]()
        out.reserveCapacity(bytes.count / 3 + 4)
        bytes.withUnsafeBufferPointer { buffer in
            for piece in SpecialToken.partition(buffer, specialTokens, parseSpecial: parseSpecial) {
                switch piece {
                case .special(let id):
                    out.append(id)
                case .text(let range):
                    preTokenizer.forEachWord(in: buffer, range: range) { word in
                        encodeWord(UnsafeBufferPointer(rebasing: buffer[word]), appendingTo: &out)
                    }
                }
            }
        }
        return out
    }

    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>, appendingTo out: inout [Int]) {
        if word.count == 1 { out.append(Int(byteTokens[Int(word[0])])); return }
        let key = Array(word)
        cacheLock.lock()
        let cached = wordCache[key]
        cacheLock.unlock()
        if let cached { out.append(contentsOf: cached); return }

        var symbols = word.map { byteTokens[Int($0)] }
        var ids = [Int]()
        ids.reserveCapacity(symbols.count)
        merges.apply(to: &symbols, appendingTo: &ids)
        out.append(contentsOf: ids)

        cacheLock.lock()
        if wordCache.count >= Self.wordCacheLimit { wordCache.removeAll(keepingCapacity: true) }
        wordCache[key] = ids
        cacheLock.unlock()
    }

    // MARK: - Decoding

    /// The text of the ids; a character split across the ends of `ids` becomes U+FFFD (stream with
    /// `StreamingDecoder` to avoid that). Ids outside the vocabulary are skipped.
    public func decode(_ ids: [Int]) -> String {
        String(decoding: decodeBytes(ids), as: UTF8.self)
    }

    /// The raw bytes of the ids (special tokens give their text). Ids outside the vocabulary are skipped.
    public func decodeBytes(_ ids: [Int]) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(ids.count * 4)
        for id in ids where id >= 0 && id < vocabularySize { bytes.append(contentsOf: tokenBytes[id]) }
        return bytes
    }

    // MARK: - Vocabulary

    /// The id of a token by its vocabulary spelling ("Ġthe", "<|im_end|>").
    public func tokenId(_ token: String) -> Int? { tokenIdForText[token] }

    /// The vocabulary spelling of a token.
    public func tokenText(_ id: Int) -> String? {
        id >= 0 && id < vocabularySize ? tokenTexts[id] : nil
    }

    /// The GGUF type of a token (normal, control, ...).
    public func tokenType(_ id: Int) -> GGUFTokenType? {
        id >= 0 && id < vocabularySize ? tokenTypes[id] : nil
    }

    /// Control tokens (`<|im_start|>`, `<|endoftext|>`, ...): generation output usually hides them.
    public func isControl(_ id: Int) -> Bool { tokenType(id) == .control }
}
