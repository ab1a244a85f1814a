import ArgumentParser
import Foundation
import KVCBaselines
import KVCBackbone
import KVCCore
import KVCCapsule
import KVCCollector
import KVCSmolVLM
import KVCVision

/// Accuracy of the VLM on easy-VQA: a thin command over `EasyVQAEvaluation`.
struct KVCEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-eval",
        abstract: "Answer easy-VQA questions greedily with the full cache and report accuracy and speed.",
        discussion: """
            kvc-eval --task easy-vqa --split test --limit 300 --answers runs/eval/answers.jsonl
            kvc-eval --task easy-vqa --split test --blind --json     (blind baseline: no image tokens)
            kvc-eval --answer-kind open --adapter checkpoints/capsule-r0.6.kvcap --json   (shape/colour questions only)
            Prints one summary line; with --json it is JSON:
            {"task":"easy-vqa","split":"test","n":...,"accuracy":...,"cache":"full","questions_per_second":...,...}
            accuracy_yes_no / accuracy_open: the yes/no questions (74% of easy-VQA) and the others (shape and colour
            names, which only the image tokens' spatial content answers);
            kv_bytes / kv_bytes_full: mean bytes the cache / a full float16 cache held at the end of a question;
            seconds_*: where the time went (front end, image prefixes, question prefills, decoding);
            skipped: dataset entries that could not be used (each is listed on stderr).
            Each image's prefix is prefilled once and shared by its questions (the cache is trimmed back to it),
            unless the front end reads the question (the shipped one does): then every question has its own prefix.

            Comparing caches (--method, or --images K for the multi-image task): the same questions are answered
            with the full float16 cache and with the method, in this process, and the summary adds fidelity:
            kvc-eval --method h2o --ratio 0.6 --limit 200 --json
            kvc-eval --method capsule --adapter checkpoints/capsule-r0.6.kvcap --images 4 --limit 200 --json
            {"method":"h2o","ratio":0.6,"images":1,"accuracy":...,"accuracy_full":...,"agreement":...,
             "top1_agreement":...,"kl":...,"attn_rel_error":[...per layer...],"kv_bytes":...,"kv_bytes_vision":...,...}
            Methods: full, capsule (with --adapter), int8, int4 (fixed ratios 0.484 / 0.719), strided, random, h2o,
            snapkv, fastv, pca. Every method compresses only the image tokens, after the prefix is prefilled, to at
            most (1 - ratio) of their float16 bytes, every overhead counted. agreement: greedy answer equal to the full
            cache's; top1_agreement / kl: first answer token's next-token distribution vs the full cache's;
            attn_rel_error: per layer, relative error of the attention output of the last question token.
            """)

    @Option(help: "Benchmark (only easy-vqa).") var task = "easy-vqa"
    @Option(help: "Dataset split: train or test.") var split = "test"
    @Option(help: "Evaluate the first N usable questions (default: all).") var limit: Int?
    @Option(help: "Write one JSON line per question (image, question, expected, answer) to this file.") var answers: String?
    @Flag(help: "Print the summary as JSON.") var json = false
    @Option(name: .customLong("front-end"), help: "Front-end checkpoint.")
    var frontEnd = FrontEnd.defaultCheckpoint
    @Option(name: .customLong("question-prompt"), help: "Learned tokens after the question: auto (the front end's companion file FRONT_END.question-prompt.safetensors, if present), none (the plain prompt), or a path.")
    var questionPrompt = "auto"
    @Option(help: "GGUF model file (default: the project's SmolLM2 asset), or a Hugging Face SmolVLM directory.")
    var model: String?
    @Option(help: "easy-VQA directory (default: the project's asset).") var data: String?
    @Flag(help: "Blind baseline: the same model with the image tokens left out of the prompt.") var blind = false
    @Flag(help: "Answer with the best of the data set's labels at the first answer step instead of free generation (with --blind: the meaningful blind baseline, since a free-running blind model answers in sentences).")
    var constrained = false
    @Option(name: .customLong("capsule-mode"), help: "With --adapter: fused (attention reads the capsule, the default) or dense (rebuild the span every step).")
    var capsuleMode: String?
    @Option(help: "Decoder threads (default: all cores; 1 with --lanes).") var threads: Int?
    @Option(name: .customLong("weight-products"), help: "Arithmetic of the decode steps' weight products: float32 (default) or bfloat16 (AVX-512 BF16 dot products: cheaper batches, see WeightProducts). Prefill stays float32.")
    var weightProducts: WeightProducts = .float32
    @Option(help: "Evaluation lanes side by side, each answering a contiguous run of the images on its own thread with decoder and BLAS threads 1 (a ~70-position prefix does not scale with threads, lanes do; same answers as one lane). Plain and --adapter evaluation.")
    var lanes = 1
    @Flag(help: "No progress on stderr.") var quiet = false
    @Option(help: "A .kvcap capsule adapter: answer from the compressed cache (its vision span is compressed after prefill).")
    var adapter: String?
    @Option(help: "Compare a cache method with the full cache: full, capsule (with --adapter), int8, int4, strided, random, h2o, snapkv, fastv, pca.")
    var method: String?
    @Option(help: "Compression ratio for --method (fraction of the vision tokens' float16 bytes removed).") var ratio: Double?
    @Option(help: "Images per prompt (multi-image task: the question names its image; 1 = plain easy-VQA).") var images: Int?
    @Option(help: "Seed of the multi-image grouping and of the random baseline.") var seed: UInt64 = 0
    @Option(name: .customLong("questions-per-image"), help: "Questions asked per image (default: all for 1 image, 1 for more).")
    var questionsPerImage: Int?
    @Option(name: .customLong("answer-kind"), help: "Ask only these questions: all, yes-no, or open (shape and colour names: their answers live in the image tokens' spatial content; the shipped front end writes a yes/no answer into an offset shared by all of an image's tokens).")
    var answerKind = "all"

    func validate() throws {
        if task != "easy-vqa" { throw ValidationError("--task: only 'easy-vqa' is supported, not '\(task)'") }
        if EasyVQA.Split(rawValue: split) == nil { throw ValidationError("--split must be 'train' or 'test', not '\(split)'") }
        if let limit, limit < 1 { throw ValidationError("--limit must be >= 1") }
        if EasyVQASplit.AnswerKind(rawValue: answerKind) == nil {
            throw ValidationError("--answer-kind must be one of \(EasyVQASplit.AnswerKind.allCases.map(\.rawValue).joined(separator: ", ")), not '\(answerKind)'")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        if lanes < 1 { throw ValidationError("--lanes must be >= 1") }
        if lanes > 1 && (method != nil || images != nil) {
            throw ValidationError("--lanes applies to plain and --adapter evaluation, not to --method or --images comparisons")
        }
        if let method, !MethodCatalog.names.contains(method) {
            throw ValidationError("--method must be one of \(MethodCatalog.names.joined(separator: ", ")), not '\(method)'")
        }
        if let images, images < 1 { throw ValidationError("--images must be >= 1") }
        if let ratio, !(0..<1).contains(ratio) { throw ValidationError("--ratio must be in [0, 1)") }
        if blind && (method != nil || images != nil) { throw ValidationError("--blind does not combine with --method / --images") }
        if constrained && (method != nil || images != nil) {
            throw ValidationError("--constrained does not combine with --method / --images")
        }
        if let capsuleMode, CapsuleAttentionMode(rawValue: capsuleMode) == nil {
            throw ValidationError("--capsule-mode must be one of \(CapsuleAttentionMode.allCases.map(\.rawValue).joined(separator: ", ")), not '\(capsuleMode)'")
        }
        if capsuleMode != nil && adapter == nil { throw ValidationError("--capsule-mode needs --adapter") }
    }

    func run() throws {
        do {
            let smolVLMDirectory = SmolVLM.modelDirectory(model)   // then --front-end is not used
            let vlm = try smolVLMDirectory.map { try SmolVLM(directory: $0).visionLanguageModel() }
                ?? VisionLanguageModel.load(modelPath: model ?? Assets.smolLM2GGUF, frontEndPath: frontEnd,
                                           questionPrompt: QuestionPromptSource(argument: questionPrompt))
            if let threads { vlm.backbone.model.threads = threads }
            vlm.backbone.model.weightProducts = weightProducts
            if lanes > 1 {
                // Each lane is one thread; more threads inside a lane would only contend for the same cores.
                vlm.backbone.model.threads = threads ?? 1
                BLAS.threads = 1
            }
            let dataset = try EasyVQA(root: data ?? Assets.easyVQA)
            let loaded = try dataset.load(EasyVQA.Split(rawValue: split)!, progress: !quiet)
                .questions(EasyVQASplit.AnswerKind(rawValue: answerKind)!)
            for entry in loaded.skipped { FileHandle.standardError.write(Data("kvc-eval: skipped \(entry)\n".utf8)) }
            if method != nil || images != nil {
                try compare(vlm, loaded)
                return
            }
            var options = EasyVQAEvaluation.Options()
            options.limit = limit
            options.blind = blind
            options.constrainedLabels = constrained ? dataset.answers : nil
            options.progress = !quiet
            options.frontEndPath = smolVLMDirectory ?? frontEnd
            options.lanes = lanes
            var evaluation = EasyVQAEvaluation(model: vlm, options: options)
            if let adapter {
                let modelPath = model ?? Assets.smolLM2GGUF
                let fingerprint = try smolVLMDirectory.map(SmolVLM.fingerprint(directory:))
                    ?? CacheCollector.fingerprint(modelPath: modelPath, frontEndPath: frontEnd).fingerprint
                let config = vlm.backbone.model.config, rope = vlm.backbone.model.rope
                var settings = try CapsuleAdapter.load(path: adapter, config: config, fingerprint: fingerprint).settings
                if let capsuleMode { settings.mode = CapsuleAttentionMode(rawValue: capsuleMode)! }
                evaluation.options.prefixPerQuestion = settings.isQuestionAware
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
            if let answers { try writeLines(result.records, to: answers) }
            try printSummary(result.summary)
        } catch let error as KVCError {
            FileHandle.standardError.write(Data("kvc-eval: error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }

    /// The method and the full cache on the same (multi-image) questions, with fidelity metrics.
    private func compare(_ vlm: VisionLanguageModel, _ loaded: EasyVQASplit) throws {
        let chosen = try MethodCatalog.method(named: method ?? (adapter != nil ? "capsule" : "full"), ratio: ratio,
                                              model: vlm, adapter: adapter, modelPath: model ?? Assets.smolLM2GGUF,
                                              frontEndPath: frontEnd, seed: seed)
        let task = try MultiImageTask(split: loaded, images: images ?? 1, limit: limit, seed: seed,
                                      questionsPerImage: questionsPerImage)
        var evaluation = CacheFidelityEvaluation(model: vlm, task: task, split: loaded)
        evaluation.progress = !quiet
        let full = try evaluation.observe(.full(vlm))
        let run = chosen.name == "full" ? full : try evaluation.observe(chosen)
        let summary = try evaluation.compare(run, full: full)
        if let answers { try writeLines(evaluation.records(run, full: full), to: answers) }
        if json {
            print(try jsonLine(summary))
        } else {
            print(String(format: "%@ K=%d, %@ r=%.3f (measured %.3f): accuracy %.4f (full %.4f) on %d questions, "
                         + "agreement %.3f, top-1 %.3f, KL %.4f, vision kv %d bytes (full %d), %.2f questions/s",
                         summary.task, summary.images, summary.method, summary.ratio, summary.ratio_measured,
                         summary.accuracy, summary.accuracy_full, summary.n, summary.agreement, summary.top1_agreement,
                         summary.kl, summary.kv_bytes_vision, summary.kv_bytes_vision_full, summary.questions_per_s))
        }
    }

    /// All lines at once through `AtomicFile`, so a reader never sees a half-written file.
    private func writeLines<T: Encodable>(_ records: [T], to path: String) throws {
        var text = ""
        for r in records { text += try jsonLine(r) + "\n" }
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        try AtomicFile.write(text, to: path)
    }

    private func printSummary(_ s: EasyVQAEvaluation.Summary) throws {
        if json {
            print(try jsonLine(s))
        } else {
            let kinds = [("yes/no", s.accuracy_yes_no), ("shape/colour", s.accuracy_open)]
                .compactMap { name, a in a.map { String(format: "%@ %.4f", name, $0) } }.joined(separator: ", ")
            print(String(format: "easy-vqa %@%@: accuracy %.4f on %d questions (%@; cache %@), %.2f questions/s, "
                         + "kv %d bytes (full %d), %d skipped", s.split, s.blind ? " (blind)" : "", s.accuracy, s.n,
                         kinds, s.cache, s.questions_per_second, s.kv_bytes, s.kv_bytes_full, s.skipped))
        }
    }
}

private func jsonLine<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

KVCEval.main()

extension WeightProducts: ExpressibleByArgument {}
