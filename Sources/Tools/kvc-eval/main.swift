import ArgumentParser
import Foundation
import KVCCore
import KVCCapsule
import KVCCollector
import KVCVision

/// Accuracy of the VLM on easy-VQA: a thin command over `EasyVQAEvaluation`.
struct KVCEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-eval",
        abstract: "Answer easy-VQA questions greedily with the full cache and report accuracy and speed.",
        discussion: """
            kvc-eval --task easy-vqa --split test --limit 300 --answers runs/eval/answers.jsonl
            kvc-eval --task easy-vqa --split test --blind --json     (blind baseline: no image tokens)
            Prints one summary line; with --json it is JSON:
            {"task":"easy-vqa","split":"test","n":...,"accuracy":...,"cache":"full","questions_per_second":...,...}
            kv_bytes / kv_bytes_full: mean bytes the cache / a full float16 cache held at the end of a question;
            seconds_*: where the time went (front end, image prefixes, question prefills, decoding);
            skipped: dataset entries that could not be used (each is listed on stderr).
            Each image's prefix is prefilled once and shared by its questions (the cache is trimmed back to it).
            """)

    @Option(help: "Benchmark (only easy-vqa).") var task = "easy-vqa"
    @Option(help: "Dataset split: train or test.") var split = "test"
    @Option(help: "Evaluate the first N usable questions (default: all).") var limit: Int?
    @Option(help: "Write one JSON line per question (image, question, expected, answer) to this file.") var answers: String?
    @Flag(help: "Print the summary as JSON.") var json = false
    @Option(name: .customLong("front-end"), help: "Front-end checkpoint.")
    var frontEnd = "checkpoints/frontend-easyvqa.safetensors"
    @Option(help: "GGUF model file (default: the project's SmolLM2 asset).") var model: String?
    @Option(help: "easy-VQA directory (default: the project's asset).") var data: String?
    @Flag(help: "Blind baseline: the same model with the image tokens left out of the prompt.") var blind = false
    @Option(help: "Decoder threads (default: all cores).") var threads: Int?
    @Flag(help: "No progress on stderr.") var quiet = false
    @Option(help: "A .kvcap capsule adapter: answer from the compressed cache (its vision span is compressed after prefill).")
    var adapter: String?

    func validate() throws {
        if task != "easy-vqa" { throw ValidationError("--task: only 'easy-vqa' is supported, not '\(task)'") }
        if EasyVQA.Split(rawValue: split) == nil { throw ValidationError("--split must be 'train' or 'test', not '\(split)'") }
        if let limit, limit < 1 { throw ValidationError("--limit must be >= 1") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
    }

    func run() throws {
        do {
            let vlm = try VisionLanguageModel.load(modelPath: model ?? Assets.smolLM2GGUF, frontEndPath: frontEnd)
            if let threads { vlm.backbone.model.threads = threads }
            let dataset = try EasyVQA(root: data ?? Assets.easyVQA)
            let loaded = try dataset.load(EasyVQA.Split(rawValue: split)!, progress: !quiet)
            for entry in loaded.skipped { FileHandle.standardError.write(Data("kvc-eval: skipped \(entry)\n".utf8)) }
            var options = EasyVQAEvaluation.Options()
            options.limit = limit
            options.blind = blind
            options.progress = !quiet
            options.frontEndPath = frontEnd
            var evaluation = EasyVQAEvaluation(model: vlm, options: options)
            if let adapter {
                let modelPath = model ?? Assets.smolLM2GGUF
                let fingerprint = try CacheCollector.fingerprint(modelPath: modelPath, frontEndPath: frontEnd).fingerprint
                let config = vlm.backbone.model.config, rope = vlm.backbone.model.rope
                let settings = try CapsuleAdapter.load(path: adapter, config: config, fingerprint: fingerprint).settings
                evaluation.options.cacheName = "capsule"
                evaluation.makeCache = { CapsuleCache(config: config, rope: rope, settings: settings) }
                evaluation.afterPrefill = { cache, prefix in
                    guard !prefix.grids.isEmpty, let capsule = cache as? CapsuleCache else { return }
                    try capsule.compress(imageGridsAtPositions: prefix.grids)
                }
                evaluation.storedBytes = { ($0 as? CapsuleCache).map { $0.textBytes + $0.visionBytes } ?? $0.residentBytes }
                evaluation.visionBytes = { cache in
                    let c = cache as? CapsuleCache
                    return (settings.budget.ratio, c?.visionBytes ?? 0, c?.visionBytesFull ?? 0)
                }
            }
            let result = try evaluation.run(loaded)
            if let answers { try writeAnswers(result.records, to: answers) }
            try printSummary(result.summary)
        } catch let error as KVCError {
            FileHandle.standardError.write(Data("kvc-eval: error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }

    /// All lines at once through `AtomicFile`, so a reader never sees a half-written file.
    private func writeAnswers(_ records: [EasyVQAEvaluation.Record], to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var text = ""
        for r in records { text += String(decoding: try encoder.encode(r), as: UTF8.self) + "\n" }
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        try AtomicFile.write(text, to: path)
    }

    private func printSummary(_ s: EasyVQAEvaluation.Summary) throws {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(s), as: UTF8.self))
        } else {
            print(String(format: "easy-vqa %@%@: accuracy %.4f on %d questions (cache %@), %.2f questions/s, "
                         + "kv %d bytes (full %d), %d skipped", s.split, s.blind ? " (blind)" : "", s.accuracy, s.n,
                         s.cache, s.questions_per_second, s.kv_bytes, s.kv_bytes_full, s.skipped))
        }
    }
}

KVCEval.main()
