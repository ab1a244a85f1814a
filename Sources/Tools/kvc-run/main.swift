import ArgumentParser
import Foundation
import KVCBackbone
import KVCCore
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
            """)

    @Option(help: "Text to continue (with --chat: the user's message).") var prompt: String?
    @Option(help: "GGUF model file (default: the project's SmolLM2 asset).") var model: String?
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
    var frontEnd = "checkpoints/frontend-easyvqa.safetensors"

    func validate() throws {
        if (prompt == nil) == (perplexity == nil) { throw ValidationError("give exactly one of --prompt or --perplexity") }
        if maxTokens < 0 { throw ValidationError("--max-tokens must be >= 0") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        if chars < 0 { throw ValidationError("--chars must be >= 0") }
        if !image.isEmpty && prompt == nil { throw ValidationError("--image needs --prompt (the question)") }
    }

    func run() throws {
        do {
            if !image.isEmpty { return try runVision() }
            let backbone = try Backbone(path: model ?? Assets.smolLM2GGUF)
            if let threads { backbone.model.threads = threads }
            if let perplexity { try runPerplexity(backbone, file: perplexity) } else { try runGeneration(backbone) }
        } catch let error as KVCError {
            FileHandle.standardError.write(Data("kvc-run: error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }

    private func runGeneration(_ backbone: Backbone) throws {
        var parameters = GenerationParameters(maxTokens: maxTokens, temperature: temperature, topK: topK, topP: topP, seed: seed)
        if greedy { parameters = .greedy(maxTokens: maxTokens) }
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
        let vlm = try VisionLanguageModel.load(modelPath: model ?? Assets.smolLM2GGUF, frontEndPath: frontEnd)
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
