import Foundation
import KVCCore
import KVCVision

/// Methods x ratios x images-per-prompt, each compared with the full cache on the same questions, one JSONL line per
/// (method, ratio, images) — `CacheFidelityEvaluation.Summary`. Resumable: lines already in the output file (same
/// method, ratio, images, task, split and question count) are not run again. The full cache runs once per image
/// count and is the reference for every method at that count.
public struct MethodSweep {
    public struct Options {
        public var methods = MethodCatalog.names
        public var ratios = [0.6, 0.8]
        public var images = [1]
        public var limit: Int? = 200
        public var seed: UInt64 = 0
        public var questionsPerImage: Int?
        /// Ask only these questions (the task name says which).
        public var answerKind = EasyVQASplit.AnswerKind.all
        /// Capsule adapter per ratio; `{ratio}` becomes the ratio as in `0.6`. Ratios without a file are skipped.
        public var adapterPattern = "checkpoints/capsule-r{ratio}.kvcap"
        public var progress = true
        public init() {}
    }

    public let model: VisionLanguageModel
    public let split: EasyVQASplit
    public let modelPath: String
    public let frontEndPath: String
    public var options: Options

    public init(model: VisionLanguageModel, split: EasyVQASplit, modelPath: String, frontEndPath: String, options: Options) {
        self.model = model
        self.split = split
        self.modelPath = modelPath
        self.frontEndPath = frontEndPath
        self.options = options
    }

    /// Identifies a line for resuming.
    struct LineKey: Hashable {
        var method: String, ratio: Int, images: Int, task: String, split: String, n: Int
        init(method: String, ratio: Double, images: Int, task: String, split: String, n: Int) {
            self.method = method
            self.ratio = Int((ratio * 10_000).rounded())
            self.images = images
            self.task = task
            self.split = split
            self.n = n
        }
    }

    /// Runs what `output` does not hold yet, appending each line as soon as it is measured. Returns the new lines.
    @discardableResult
    public func run(output: String) throws -> [CacheFidelityEvaluation.Summary] {
        var done = Set<LineKey>()
        var text = FileManager.default.fileExists(atPath: output) ? try String(contentsOfFile: output, encoding: .utf8) : ""
        for (i, line) in text.split(separator: "\n").enumerated() where !line.isEmpty {
            guard let s = try? JSONDecoder().decode(CacheFidelityEvaluation.Summary.self, from: Data(line.utf8)) else {
                throw KVCError.file(output, "line \(i + 1) is not a sweep result")
            }
            done.insert(LineKey(method: s.method, ratio: s.ratio, images: s.images, task: s.task, split: s.split, n: s.n))
        }
        // Plan every line first (method construction checks names and adapters), then run the missing ones.
        var plan: [(images: Int, task: MultiImageTask, methods: [CacheMethod])] = []
        for k in options.images {
            let task = try MultiImageTask(split: split, images: k, limit: options.limit, seed: options.seed,
                                          questionsPerImage: options.questionsPerImage, answerKind: options.answerKind)
            var methods: [CacheMethod] = [], seen = Set<LineKey>()
            for name in options.methods {
                let fixed = name == "full" || (BaselineMethod(rawValue: name)?.hasFixedRatio ?? false)
                for r in fixed ? [options.ratios.first ?? 0] : options.ratios {
                    var adapter: String?
                    if name == "capsule" {
                        let path = options.adapterPattern.replacingOccurrences(of: "{ratio}", with: String(format: "%g", r))
                        guard FileManager.default.fileExists(atPath: path) else {
                            FileHandle.standardError.write(Data("kvc-sweep: no capsule adapter \(path), skipping capsule r=\(r)\n".utf8))
                            continue
                        }
                        adapter = path
                    }
                    let m = try MethodCatalog.method(named: name, ratio: name == "full" ? nil : r, model: model,
                                                     adapter: adapter, modelPath: modelPath, frontEndPath: frontEndPath,
                                                     seed: options.seed)
                    let key = LineKey(method: m.name, ratio: m.ratio, images: k, task: task.name, split: split.split.rawValue,
                                      n: task.questionCount)
                    if !done.contains(key) && seen.insert(key).inserted { methods.append(m) }
                }
            }
            if !methods.isEmpty { plan.append((k, task, methods)) }
        }
        let total = plan.reduce(0) { $0 + $1.methods.count }
        let meter = Progress("sweep", total: total, unit: "runs", enabled: options.progress)
        var written: [CacheFidelityEvaluation.Summary] = []
        for (_, task, methods) in plan {
            var evaluation = CacheFidelityEvaluation(model: model, task: task, split: split)
            evaluation.progress = options.progress
            let full = try evaluation.observe(.full(model))
            for m in methods {
                let run = m.name == "full" ? full : try evaluation.observe(m)
                let summary = try evaluation.compare(run, full: full)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                text += String(decoding: try encoder.encode(summary), as: UTF8.self) + "\n"
                try AtomicFile.write(text, to: output)
                written.append(summary)
                meter.advance(status: "\(m.name) r=\(String(format: "%.2f", m.ratio)) K=\(task.images): "
                              + String(format: "accuracy %.3f, agreement %.3f", summary.accuracy, summary.agreement))
            }
        }
        return written
    }
}
