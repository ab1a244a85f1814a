import ArgumentParser
import Foundation
import KVCBaselines
import KVCCore
import KVCVision

/// Accuracy and fidelity of every cache method at equal bytes: a thin command over `MethodSweep`.
struct KVCSweep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-sweep",
        abstract: "Evaluate cache methods x ratios x images per prompt against the full cache; one JSONL line each.",
        discussion: """
            kvc-sweep --ratios 0.6,0.8 --images 1,4 --limit 200 -o checkpoints/results/sweep.jsonl
            kvc-sweep --answer-kind open --limit 300 -o checkpoints/results/sweep-open.jsonl
            Each line (keys sorted): method, ratio (nominal; int8/int4 at their own fixed ratio, full 0),
            ratio_measured (1 - kv_bytes_vision / kv_bytes_vision_full), images, task (easy-vqa | easy-vqa-multi, with
            -open / -yes-no appended under --answer-kind),
            split, n, accuracy, accuracy_full, agreement (greedy answer equal to the full cache's), top1_agreement and
            kl (first answer token's next-token distribution vs the full cache's), attn_rel_error (per layer: relative
            error of the last question token's attention output), kv_bytes, kv_bytes_full, kv_bytes_vision,
            kv_bytes_vision_full (means per question), questions_per_s, seconds (the method's run), threads.
            Resumable: lines already in the file are skipped. The full cache runs once per image count.
            """)

    @Option(help: "Comma-separated methods (\(MethodCatalog.names.joined(separator: ","))).")
    var methods = MethodCatalog.names.joined(separator: ",")
    @Option(help: "Comma-separated ratios.") var ratios = "0.6,0.8"
    @Option(help: "Comma-separated images per prompt.") var images = "1"
    @Option(help: "Questions per (method, ratio, images).") var limit = 200
    @Option(help: "Dataset split: train or test.") var split = "test"
    @Option(name: [.customShort("o"), .long], help: "JSONL results file (appended to; existing lines are kept).") var output: String
    @Option(help: "Capsule adapter per ratio ({ratio} becomes 0.6, ...).") var adapters = "checkpoints/capsule-r{ratio}.kvcap"
    @Option(help: "Seed of the multi-image grouping and of the random baseline.") var seed: UInt64 = 0
    @Option(name: .customLong("questions-per-image"), help: "Questions per image (default: all for 1 image, 1 for more).")
    var questionsPerImage: Int?
    @Option(name: .customLong("answer-kind"), help: "Ask only these questions: all, yes-no, or open (shape and colour names, which only the image tokens answer); the task name in the results says which.")
    var answerKind = "all"
    @Option(name: .customLong("front-end"), help: "Front-end checkpoint.") var frontEnd = FrontEnd.defaultCheckpoint
    @Option(help: "GGUF model file (default: the project's SmolLM2 asset).") var model: String?
    @Option(help: "easy-VQA directory (default: the project's asset).") var data: String?
    @Option(help: "Decoder threads (default: all cores).") var threads: Int?
    @Flag(help: "No progress on stderr.") var quiet = false

    func validate() throws {
        for m in list(methods) where !MethodCatalog.names.contains(m) {
            throw ValidationError("--methods: unknown '\(m)' (known: \(MethodCatalog.names.joined(separator: ", ")))")
        }
        guard let r = numbers(ratios, Double.init), r.allSatisfy({ (0..<1).contains($0) }), !r.isEmpty else {
            throw ValidationError("--ratios: comma-separated numbers in [0, 1), not '\(ratios)'")
        }
        guard let k = numbers(images, Int.init), k.allSatisfy({ $0 >= 1 }), !k.isEmpty else {
            throw ValidationError("--images: comma-separated counts >= 1, not '\(images)'")
        }
        if limit < 1 { throw ValidationError("--limit must be >= 1") }
        if EasyVQA.Split(rawValue: split) == nil { throw ValidationError("--split must be 'train' or 'test', not '\(split)'") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        if EasyVQASplit.AnswerKind(rawValue: answerKind) == nil {
            throw ValidationError("--answer-kind must be one of \(EasyVQASplit.AnswerKind.allCases.map(\.rawValue).joined(separator: ", ")), not '\(answerKind)'")
        }
    }

    func run() throws {
        do {
            let modelPath = model ?? Assets.smolLM2GGUF
            let vlm = try VisionLanguageModel.load(modelPath: modelPath, frontEndPath: frontEnd)
            if let threads { vlm.backbone.model.threads = threads }
            let loaded = try EasyVQA(root: data ?? Assets.easyVQA).load(EasyVQA.Split(rawValue: split)!, progress: !quiet)
            for entry in loaded.skipped { FileHandle.standardError.write(Data("kvc-sweep: skipped \(entry)\n".utf8)) }
            var options = MethodSweep.Options()
            options.methods = list(methods)
            options.ratios = numbers(ratios, Double.init)!
            options.images = numbers(images, Int.init)!
            options.limit = limit
            options.seed = seed
            options.questionsPerImage = questionsPerImage
            options.answerKind = EasyVQASplit.AnswerKind(rawValue: answerKind)!
            options.adapterPattern = adapters
            options.progress = !quiet
            let directory = (output as NSString).deletingLastPathComponent
            if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            let lines = try MethodSweep(model: vlm, split: loaded, modelPath: modelPath, frontEndPath: frontEnd,
                                        options: options).run(output: output)
            for s in lines {
                print(String(format: "%-8@ r=%.3f K=%-2d accuracy %.3f (full %.3f) agreement %.3f top-1 %.3f KL %.4f "
                             + "vision bytes %d / %d", s.method, s.ratio, s.images, s.accuracy, s.accuracy_full,
                             s.agreement, s.top1_agreement, s.kl, s.kv_bytes_vision, s.kv_bytes_vision_full))
            }
        } catch let error as KVCError {
            FileHandle.standardError.write(Data("kvc-sweep: error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }

    private func list(_ s: String) -> [String] { s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
    private func numbers<T>(_ s: String, _ parse: (String) -> T?) -> [T]? {
        let parsed = list(s).map(parse)
        return parsed.contains { $0 == nil } ? nil : parsed.compactMap { $0 }
    }
}

KVCSweep.main()
