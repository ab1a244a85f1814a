import ArgumentParser
import Foundation
import KVCBackbone
import KVCCore
import KVCSmolVLM
import KVCVision

/// Text generation and perplexity with the frozen backbone: a thin command over `Backbone` and `Perplexity`.
struct KVCRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-run",
        abstract: "Generate text with the SmolLM2 backbone, or measure its perplexity on a text file.",
        discussion: """
            kvc-run --prompt "The capital of France is" --greedy
            kvc-run --prompt "What is 2+2?" --chat --max-tokens 64 --temperature 0.7 --seed 1
            kvc-run --perplexity /usr/share/common-licenses/GPL-3 --context 512 --chars 20000
            kvc-run --image assets/easy-vqa/test/images/0.png --prompt "what is the red shape?"

            Hugging Face model directories (SmolVLM / Idefics3, or a Llama; config.json + model.safetensors or shards):
            kvc-run --model DIR --image photo.png --prompt "Describe the image." --greedy
            kvc-run --model DIR --image photo.png --token-ids 1,55,300,303,301,...,300,28 --dump out.safetensors
              (one forward pass on exactly those ids; positions holding the model's image_token_id receive the image
              features in order; writes float32 logits [T, vocab] and layers.i.key / layers.i.value
              [kv_heads, T, head_dim], keys after RoPE in transformers' layout, for parity checks)
            Text prompts need the directory's tokenizer.json (byte-level BPE; others: use --token-ids). With images,
            --prompt is the user message of SmolVLM's chat format; each --image is split into tiles plus a global image
            when the directory's preprocessor_config.json says so (do_image_splitting), as transformers does.
            """)

    @Option(help: "Text to continue (with --chat: the user's message).") var prompt: String?
    @Option(help: "GGUF model file (default: the project's SmolLM2 asset), or a Hugging Face model directory.")
    var model: String?
    @Option(name: .customLong("token-ids"), help: "With --model DIR: run exactly these comma-separated token ids.")
    var tokenIds: String?
    @Option(help: "With --token-ids: write logits and every layer's keys/values (float32 safetensors) to this file.")
    var dump: String?
    @Option(name: .customLong("max-tokens"), help: "Most tokens to generate.") var maxTokens = 128
    @Flag(help: "Always pick the most likely token.") var greedy = false
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0.7
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0 = all).") var topK = 40
    @Option(name: .customLong("top-p"), help: "Nucleus: smallest set of tokens reaching this probability.") var topP: Float = 0.95
    @Option(help: "Random seed for sampling.") var seed: UInt64 = 0
    @Flag(help: "Wrap the prompt in the model's chat template (ChatML) as a user turn.") var chat = false
    @Flag(help: "Print JSON instead of streaming text.") var json = false
    @Option(help: "Decode threads (default: all cores).") var threads: Int?
    @Option(help: "Measure perplexity on this text file instead of generating.") var perplexity: String?
    @Option(help: "Perplexity window in tokens.") var context = 512
    @Option(help: "Perplexity: use the first N characters of the file (0 = all).") var chars = 20_000
    @Option(help: "Ask --prompt about this PNG/JPEG image with the VLM (repeat for several images, in prompt order).")
    var image: [String] = []
    @Option(name: .customLong("front-end"), help: "VLM front-end checkpoint for --image.")
    var frontEnd = FrontEnd.defaultCheckpoint
    @Option(name: .customLong("question-prompt"), help: "Learned tokens after the question: auto (the front end's companion file, if present), none, or a path.")
    var questionPrompt = "auto"

    /// `--model` names a Hugging Face directory rather than a GGUF file.
    var huggingFaceDirectory: String? { SmolVLM.modelDirectory(model) }

    func validate() throws {
        if [prompt != nil, perplexity != nil, tokenIds != nil].filter({ $0 }).count != 1 {
            throw ValidationError("give exactly one of --prompt, --perplexity or --token-ids")
        }
        if dump != nil && tokenIds == nil { throw ValidationError("--dump needs --token-ids") }
        if tokenIds != nil && huggingFaceDirectory == nil {
            throw ValidationError("--token-ids needs --model DIR (a Hugging Face model directory)")
        }
        if maxTokens < 0 { throw ValidationError("--max-tokens must be >= 0") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        if chars < 0 { throw ValidationError("--chars must be >= 0") }
        if !image.isEmpty && prompt == nil && tokenIds == nil {
            throw ValidationError("--image needs --prompt (the question) or --token-ids")
        }
    }

    func run() throws {
        do {
            if let directory = huggingFaceDirectory { return try runHuggingFace(directory: directory) }
            if !image.isEmpty { return try runVision() }
            let backbone = try Backbone(path: model ?? Assets.smolLM2GGUF)
            if let threads { backbone.model.threads = threads }
            if let perplexity { try runPerplexity(backbone, file: perplexity) } else { try runGeneration(backbone) }
        } catch let error as KVCError {
            FileHandle.standardError.write(Data("kvc-run: error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }

    private var generationParameters: GenerationParameters {
        greedy ? .greedy(maxTokens: maxTokens)
            : GenerationParameters(maxTokens: maxTokens, temperature: temperature, topK: topK, topP: topP, seed: seed)
    }

    private func runGeneration(_ backbone: Backbone) throws {
        let parameters = generationParameters
        let ids = chat ? backbone.encodeChat(user: prompt ?? "") : backbone.encode(prompt ?? "")
        let stream = !json
        let result = try backbone.generate(prompt: [.tokens(ids)], parameters: parameters) { _, piece in
            if stream {
                FileHandle.standardOutput.write(Data(piece.utf8))
            }
            return true
        }
        if json {
            let doc: [String: Any] = ["prompt_tokens": result.promptTokens, "tokens": result.tokens, "text": result.text]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("")
            let decodeRate = result.tokens.count > 1 ? Double(result.tokens.count - 1) / result.decodeSeconds : 0
            FileHandle.standardError.write(Data(String(
                format: "[%d prompt tokens in %.3f s, %d generated at %.1f tokens/s, stop: %@]\n",
                result.promptTokens.count, result.prefillSeconds, result.tokens.count, decodeRate,
                result.stopReason.rawValue).utf8))
        }
    }

    /// Answers the question about the images with the VLM (front end + decoder, full cache).
    private func runVision() throws {
        let images = try image.map { try Image.load(path: $0) }   // decoding errors name the file
        let vlm = try VisionLanguageModel.load(modelPath: model ?? Assets.smolLM2GGUF, frontEndPath: frontEnd,
                                               questionPrompt: QuestionPromptSource(argument: questionPrompt))
        if let threads { vlm.backbone.model.threads = threads }
        let answer = try vlm.answer(images: images, question: prompt ?? "")
        if json {
            let doc: [String: Any] = ["answer": answer.text, "generation": answer.generation, "tokens": answer.tokens,
                                      "images": image, "seconds": answer.timing.totalSeconds]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(answer.text)
            FileHandle.standardError.write(Data(String(
                format: "[%d image(s), %d tokens each; front end %.3f s, prefill %.3f s, decode %.3f s; generated %@]\n",
                images.count, vlm.frontEnd.tokensPerImage, answer.timing.frontEndSeconds, answer.timing.prefillSeconds,
                answer.timing.decodeSeconds, String(reflecting: answer.generation)).utf8))
        }
    }

    /// A Hugging Face directory (SmolVLM / Idefics3 or Llama): a parity dump, or generation from token ids or text.
    private func runHuggingFace(directory: String) throws {
        let loadStart = Date()
        let vlm = try SmolVLM(directory: directory)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        if let threads { vlm.decoder.threads = threads }
        if let perplexity {
            guard let backbone = vlm.backbone else {
                throw KVCError.file(directory, "perplexity needs the directory's tokenizer.json (byte-level BPE)")
            }
            return try runPerplexity(backbone, file: perplexity)
        }
        let images = try image.map { try Image.load(path: $0) }
        let imageStart = Date()
        let inputs = try vlm.imageInputs(for: images)   // tiles and global images, as the processor config says
        let imageSeconds = Date().timeIntervalSince(imageStart)
        let ids: [Int]
        if let tokenIds {
            ids = try tokenIds.split(separator: ",").enumerated().map { i, field in
                guard let id = Int(field.trimmingCharacters(in: .whitespaces)), id >= 0 else {
                    throw KVCError("--token-ids: entry \(i) ('\(field)') is not a non-negative integer")
                }
                return id
            }
        } else if vlm.vision != nil && (chat || !images.isEmpty) {
            ids = try vlm.encode(SmolVLMPrompt.chat(question: prompt ?? "", imageCount: images.count), images: inputs)
        } else if chat, let backbone = vlm.backbone {
            ids = backbone.encodeChat(user: prompt ?? "")
        } else {
            ids = try vlm.encode(prompt ?? "", images: inputs)
        }
        if let dump {
            let decoderStart = Date()
            let (pieces, grids) = try vlm.prompt(tokenIds: ids, imageTokens: inputs.flatMap(\.tokens))
            let result = try ParityDump.run(decoder: vlm.decoder, prompt: pieces)
            let decoderSeconds = Date().timeIntervalSince(decoderStart)
            try result.write(to: dump)
            let doc: [String: Any] = [
                "dump": dump, "tokens": result.tokenCount, "layers": result.keys.count, "kv_heads": result.kvHeads,
                "head_dim": result.headDim, "vocab": result.vocabularySize,
                "image_grids": grids.map { ["start": $0.start, "rows": $0.rows, "cols": $0.cols] },
                "load_seconds": loadSeconds, "image_seconds": imageSeconds,
                "prefill_seconds": decoderSeconds]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let stream = !json
        let start = Date()
        let tokens = try vlm.generate(tokenIds: ids, imageInputs: inputs, parameters: generationParameters) { id, piece in
            if stream { FileHandle.standardOutput.write(Data((vlm.backbone == nil ? "\(id) " : piece).utf8)) }
            return true
        }
        let text = vlm.backbone.map { $0.tokenizer.decode(tokens) }
        if json {
            var doc: [String: Any] = ["prompt_tokens": ids, "tokens": tokens]
            if let text { doc["text"] = text }
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("")
            FileHandle.standardError.write(Data(String(format: "[%d prompt tokens, %d image(s), %d generated in %.3f s]\n",
                                                       ids.count, images.count, tokens.count,
                                                       Date().timeIntervalSince(start)).utf8))
        }
    }

    private func runPerplexity(_ backbone: Backbone, file: String) throws {
        guard let data = FileManager.default.contents(atPath: file) else { throw KVCError.file(file, "cannot read the file") }
        guard var text = String(data: data, encoding: .utf8) else { throw KVCError.file(file, "is not UTF-8 text") }
        // Characters as Python counts them (Unicode scalars), so "first 20,000 characters" means the same text.
        if chars > 0, text.unicodeScalars.count > chars {
            text = String(String.UnicodeScalarView(text.unicodeScalars.prefix(chars)))
        }
        let tokens = backbone.encode(text)
        let result = try Perplexity.evaluate(model: backbone.model, tokens: tokens, context: context, progress: !json)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(String(format: "perplexity: %.4f  (context %d, %d windows, %d scored of %d tokens, %.1f s)",
                         result.perplexity, result.context, result.windows, result.scoredTokens, result.totalTokens, result.seconds))
        }
    }
}

KVCRun.main()
