import Foundation
import KVCCore
import KVCGGUF

/// A Hugging Face `tokenizer.json` (the `tokenizers` library's format) read into the project's byte-level BPE
/// tokenizer, by way of the GGUF metadata llama.cpp's converter writes for it (`tokenizer.ggml.*`).
///
/// Supported: `model.type` BPE over the GPT-2 byte-level alphabet, no normalizer, and the pre-tokenizers the project
/// implements — `ByteLevel` alone (GPT-2 split: `gpt2`) or `Sequence[Digits(individual_digits), ByteLevel]`
/// (SmolLM2's: `smollm`). Added tokens become control tokens (`special: true`) or user-defined ones, matched whole in
/// text. Anything else (SentencePiece/Unigram/WordPiece models, byte fallback, other pre-tokenizers or normalizers)
/// is refused with the field named: a different split gives plausible but wrong token ids.
public struct HFTokenizerJSON: Sendable {
    public var tokens: [String]
    public var merges: [String]
    /// GGUF token types: 1 normal, 3 control, 4 user-defined, 5 unused (a gap in the ids).
    public var tokenTypes: [Int32]
    /// `tokenizer.ggml.pre` name.
    public var preTokenizer: String
    public var bosTokenId: Int?
    public var eosTokenId: Int?
    public var padTokenId: Int?
    public var unknownTokenId: Int?
    /// `chat_template` of `tokenizer_config.json` (Jinja), passed on as `tokenizer.chat_template`: the backbone uses it
    /// when it recognises ChatML.
    public var chatTemplate: String?

    /// Reads `tokenizer.json` in `directory`, and the bos/eos/pad/unk token names of `tokenizer_config.json` when
    /// present.
    public static func read(directory: String) throws -> HFTokenizerJSON {
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        let f = try JSONFields.read(path)
        guard let model = try f.object("model") else { throw f.error("model", "is missing") }
        let type = try model.string("type", default: "BPE")
        guard type == "BPE" else { throw model.error("type", "is '\(type)'; only byte-level BPE is supported") }
        if try model.bool("byte_fallback", default: false) {
            throw model.error("byte_fallback", "is true; only byte-level BPE (no byte fallback) is supported")
        }
        if try model.bool("ignore_merges", default: false) {
            throw model.error("ignore_merges", "is true; only merge-by-merge BPE is supported")
        }
        if f.has("normalizer") { throw f.error("normalizer", "is set; only tokenizers without a normalizer are supported") }
        let pre = try preTokenizerName(f)

        guard let vocab = model.object["vocab"] as? [String: Any] else { throw model.error("vocab", "must be an object") }
        var byId: [Int: String] = [:]
        for (text, value) in vocab {
            guard let id = (value as? NSNumber)?.intValue, id >= 0 else { throw model.error("vocab.\(text)", "must be an id") }
            byId[id] = text
        }
        var special: [Int: Bool] = [:]
        for (i, entry) in (f.object["added_tokens"] as? [Any] ?? []).enumerated() {
            guard let added = entry as? [String: Any], let id = (added["id"] as? NSNumber)?.intValue, id >= 0,
                  let content = added["content"] as? String else {
                throw f.error("added_tokens[\(i)]", "must have an integer 'id' and a string 'content'")
            }
            byId[id] = content
            special[id] = (added["special"] as? NSNumber)?.boolValue ?? false
        }
        let count = (byId.keys.max() ?? -1) + 1
        guard count > 0 else { throw model.error("vocab", "is empty") }
        var tokens = [String](repeating: "", count: count)
        var types = [Int32](repeating: 1, count: count)
        for id in 0..<count {
            if let text = byId[id] {
                tokens[id] = text
                if let isSpecial = special[id] { types[id] = isSpecial ? 3 : 4 }
            } else {
                tokens[id] = "[PAD\(id)]"   // llama.cpp's filler for ids the vocabulary skips
                types[id] = 5
            }
        }
        let merges: [String]
        switch model.object["merges"] {
        case let list as [String]: merges = list
        case let pairs as [[String]] where pairs.allSatisfy({ $0.count == 2 }): merges = pairs.map { "\($0[0]) \($0[1])" }
        case nil, is NSNull: merges = []
        default: throw model.error("merges", "must be a list of \"a b\" strings or [a, b] pairs")
        }
        var result = HFTokenizerJSON(tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: pre)
        let configPath = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        if FileManager.default.fileExists(atPath: configPath) {
            let config = try JSONFields.read(configPath)
            func id(_ key: String) throws -> Int? {
                let name: String?
                if let nested = config.object[key] as? [String: Any] { name = nested["content"] as? String }
                else { name = config.has(key) ? try config.string(key) : nil }
                return name.flatMap { n in tokens.firstIndex(of: n) }
            }
            result.bosTokenId = try id("bos_token")
            result.eosTokenId = try id("eos_token")
            result.padTokenId = try id("pad_token")
            result.unknownTokenId = try id("unk_token")
            result.chatTemplate = config.object["chat_template"] as? String
        }
        return result
    }

    private init(tokens: [String], merges: [String], tokenTypes: [Int32], preTokenizer: String) {
        self.tokens = tokens
        self.merges = merges
        self.tokenTypes = tokenTypes
        self.preTokenizer = preTokenizer
    }

    /// `gpt2` for a lone ByteLevel (with its regex), `smollm` for Digits(individual) then ByteLevel.
    private static func preTokenizerName(_ f: JSONFields) throws -> String {
        guard let pre = try f.object("pre_tokenizer") else {
            throw f.error("pre_tokenizer", "is missing; byte-level BPE needs the ByteLevel pre-tokenizer")
        }
        let steps: [[String: Any]]
        if try pre.string("type") == "Sequence" {
            guard let list = pre.object["pretokenizers"] as? [[String: Any]] else {
                throw pre.error("pretokenizers", "must be a list of objects")
            }
            steps = list
        } else {
            steps = [pre.object]
        }
        func isByteLevel(_ s: [String: Any]) -> Bool {
            s["type"] as? String == "ByteLevel" && (s["add_prefix_space"] as? NSNumber)?.boolValue != true
                && (s["use_regex"] as? NSNumber)?.boolValue != false
        }
        func isDigits(_ s: [String: Any]) -> Bool {
            s["type"] as? String == "Digits" && (s["individual_digits"] as? NSNumber)?.boolValue == true
        }
        if steps.count == 1, isByteLevel(steps[0]) { return "gpt2" }
        if steps.count == 2, isDigits(steps[0]), isByteLevel(steps[1]) { return "smollm" }
        let names = steps.map { $0["type"] as? String ?? "?" }
        throw pre.error("type", "is \(names); supported: ByteLevel (add_prefix_space false, use_regex true), or Sequence "
                        + "[Digits(individual_digits: true), ByteLevel]")
    }

    /// Adds the `tokenizer.ggml.*` keys to a GGUF being written.
    func addMetadata(to w: inout GGUFWriter) {
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string(preTokenizer))
        w.set("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        w.set("tokenizer.ggml.token_type", .array(tokenTypes.map { .int32($0) }))
        w.set("tokenizer.ggml.merges", .array(merges.map { .string($0) }))
        for (key, id) in [("bos_token_id", bosTokenId), ("eos_token_id", eosTokenId), ("padding_token_id", padTokenId),
                          ("unknown_token_id", unknownTokenId)] {
            if let id { w.set("tokenizer.ggml.\(key)", .uint32(UInt32(id))) }
        }
        if let chatTemplate { w.set("tokenizer.chat_template", .string(chatTemplate)) }
    }
}
