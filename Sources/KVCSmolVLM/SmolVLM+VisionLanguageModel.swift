import Foundation
import KVCBackbone
import KVCCore
import KVCVision

extension SmolVLM.ImageEncoder: ImageTokenSource {
    public var tokensPerImage: Int { config.tokensPerImage }
    public var gridSide: Int { config.gridSide }
    public var tokenWidth: Int { config.text.llama.hiddenSize }
    /// SigLIP reads the image alone; the question does not change its tokens.
    public var readsQuestion: Bool { false }
    public func embed(_ images: [Image], question: QuestionWords?) -> [[Float]] { images.map(tokens(for:)) }
}

extension SmolVLM {
    /// `path` when it names a directory — a Hugging Face model, for the commands' `--model`, which otherwise takes a
    /// GGUF file.
    public static func modelDirectory(_ path: String?) -> String? {
        var isDirectory: ObjCBool = false
        guard let path, FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue
        else { return nil }
        return path
    }

    /// The model as the toolkit's `VisionLanguageModel` (what collection, evaluation and the capsule caches take), with
    /// SmolVLM's prompt format: `<|im_start|>User:` + per image `<fake_token_around_image><global-img>` + image tokens
    /// + `<fake_token_around_image>`, then `QUESTION<end_of_utterance>\nAssistant:`. Each piece is tokenized on its own;
    /// special tokens split the text anyway, so the ids equal the processor's for the whole prompt.
    /// - Throws: `KVCError` when the directory has no vision tower or no usable tokenizer.
    public func visionLanguageModel() throws -> VisionLanguageModel {
        guard let vision else { throw KVCError.file(directory, "not a vision-language model (no vision tower)") }
        guard let backbone else {
            throw KVCError.file(directory, "no usable tokenizer.json; prompts for collection and evaluation need one")
        }
        let prompt = VisionPrompt(tokenizer: backbone.tokenizer, userStart: "<|im_start|>User:",
                                  imageOpen: "<fake_token_around_image><global-img>",
                                  imageClose: "<fake_token_around_image>", questionEnd: "<end_of_utterance>\nAssistant:")
        return try VisionLanguageModel(backbone: backbone, frontEnd: vision, prompt: prompt)
    }

    /// Identifies the weights and configuration (what cache shards and adapters record, so an adapter is never
    /// applied to another model): XXH3-128 over the names and digests of `config.json`, the preprocessor and
    /// tokenizer files present, and every safetensors file of the checkpoint, in name order.
    public static func fingerprint(directory: String) throws -> String {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0 == "config.json" || $0 == "preprocessor_config.json" || $0 == "tokenizer.json"
                || $0 == "model.safetensors.index.json" || $0.hasSuffix(".safetensors")
        }.sorted()
        var manifest = ""
        for name in names {
            manifest += "\(name):\(try Checksum.xxh128(file: (directory as NSString).appendingPathComponent(name)))\n"
        }
        return Checksum.xxh128(Data(manifest.utf8))
    }
}
