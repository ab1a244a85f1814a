import Dispatch
import Foundation
import KVCBackbone
import KVCCore
import KVCTokenizer

/// Accuracy of a cache method on the (multi-image) easy-VQA task together with its fidelity to the full float16
/// cache on the same questions: greedy-answer agreement, top-1 agreement and KL of the first answer token's
/// next-token distribution, and per layer the relative error of the attention output at that step.
///
/// `observe` runs one method over every prompt (each prompt's image prefix prefilled once into a fresh cache from the
/// method, compressed by its hook, then each question answered from it) and keeps what the comparison needs;
/// `compare` turns a method's run and the full cache's run of the same task into a summary. A sweep observes the
/// full cache once per task and compares every method with it.
public struct CacheFidelityEvaluation {
    /// What one question gave with one cache.
    public struct Observation {
        public var answer: String
        public var expected: String
        /// Next-token logits where the answer starts.
        public var logits: [Float]
        /// Per layer, the attention output (all heads, before the output projection) of the last question token.
        public var attention: [[Float]]
    }

    public struct Run {
        public var method: String
        public var ratio: Double
        public var observations: [Observation]
        /// Sums over questions: bytes the cache held at the end of the question (as the method counts them / as the
        /// full float16 cache would), and bytes of the vision span (held / full float16).
        public var bytes = 0, bytesFull = 0, visionBytes = 0, visionBytesFull = 0
        public var seconds = 0.0
    }

    /// One line of a sweep's JSONL (see `kvc-sweep --help`).
    public struct Summary: Codable, Equatable, Sendable {
        public var method: String
        public var ratio: Double
        public var ratio_measured: Double
        public var images: Int
        public var task: String
        public var split: String
        public var n: Int
        public var accuracy: Double
        public var accuracy_full: Double
        public var agreement: Double
        public var top1_agreement: Double
        public var kl: Double
        public var attn_rel_error: [Double]
        public var kv_bytes: Int
        public var kv_bytes_full: Int
        public var kv_bytes_vision: Int
        public var kv_bytes_vision_full: Int
        public var questions_per_s: Double
        /// The method's run (the full cache's reference run is timed separately).
        public var seconds: Double
        public var threads: Int
    }

    /// One answered question with both caches (a line of `kvc-eval --answers`).
    public struct Record: Codable, Equatable, Sendable {
        public var images: [Int]
        public var slot: Int
        public var question: String
        public var expected: String
        public var answer: String
        public var answer_full: String
    }

    public let model: VisionLanguageModel
    public let task: MultiImageTask
    public let split: EasyVQASplit
    /// Write progress with an ETA to stderr.
    public var progress = false

    public init(model: VisionLanguageModel, task: MultiImageTask, split: EasyVQASplit) {
        self.model = model
        self.task = task
        self.split = split
    }

    /// Runs `method` over every prompt of the task.
    public func observe(_ method: CacheMethod) throws -> Run {
        let llama = model.backbone.model, c = llama.config
        let width = c.headCount * c.headDim
        let perPosition = c.layerCount * c.kvHeadCount * c.headDim * 2 * 2
        let meter = Progress("\(method.name) r=\(String(format: "%.2f", method.ratio)) K=\(task.images)",
                             total: task.questionCount, unit: "questions", enabled: progress)
        var run = Run(method: method.name, ratio: method.ratio, observations: [])
        var correct = 0
        let start = DispatchTime.now()
        for prompt in task.prompts {
            let images = try prompt.imageIDs.map { id -> Image in
                guard let row = split.images.row(of: id) else { throw KVCError("easy-VQA: image \(id) is not loaded") }
                return split.images.image(row: row)
            }
            // One prefix per prompt, shared by its questions, unless the front end makes image tokens per question.
            var shared: VisionLanguageModel.PrefilledPrefix?
            for q in prompt.questions {
                let prefilled = try (model.frontEnd.readsQuestion ? nil : shared)
                    ?? model.prefill(imageEmbeddings: model.imageEmbeddings(images, question: q.text), question: q.text,
                                     cache: method.makeCache(), afterPrefill: method.afterPrefill)
                shared = prefilled
                let vision = method.visionBytes(prefilled.cache, prefilled.prefix)
                prefilled.rewind()
                var lastQueries = [[Float]](repeating: [], count: c.layerCount)
                let logits = try llama.forward(model.suffix(question: q.text),
                                               cache: prefilled.cache, logits: .last) { layer, queries, count, _ in
                    lastQueries[layer] = Array(UnsafeBufferPointer(start: queries + (count - 1) * width, count: width))
                }
                let attention = (0..<c.layerCount).map { l in
                    prefilled.cache.withLayer(l) {
                        LastQueryAttention.output(query: lastQueries[l], view: $0, headCount: c.headCount,
                                                  kvHeadCount: c.kvHeadCount, headDim: c.headDim)
                    }
                }
                let answer = try greedyAnswer(from: logits, cache: prefilled.cache)
                run.observations.append(Observation(answer: answer, expected: q.expected, logits: logits,
                                                    attention: attention))
                run.bytes += method.storedBytes(prefilled.cache)
                run.bytesFull += prefilled.cache.length * perPosition
                run.visionBytes += vision.held
                run.visionBytesFull += vision.full
                if answer == q.expected { correct += 1 }
                meter.advance(status: String(format: "accuracy %.3f", Double(correct) / Double(meter.done + 1)))
            }
        }
        run.seconds = elapsed(start)
        return run
    }

    /// Continues greedily from the first answer token's `logits` (the question is in the cache) until the first word
    /// is complete, as `VisionLanguageModel.answer` does, without prefilling the question a second time.
    private func greedyAnswer(from first: [Float], cache: KVCache) throws -> String {
        let backbone = model.backbone, stops = backbone.defaultStopTokens
        var logits = first, text = "", produced = 0
        var stream = StreamingDecoder(tokenizer: backbone.tokenizer)
        while produced < model.maxAnswerTokens {
            let next = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
            if stops.contains(next) { break }
            produced += 1
            text += stream.push(next)
            if AnswerText.hasCompleteFirstWord(text) || produced == model.maxAnswerTokens { break }
            logits = try backbone.model.forward(tokens: [next], cache: cache)
        }
        return AnswerText.firstWord(text + stream.finish())
    }

    /// Per-question records of `run` next to the full cache's answers.
    public func records(_ run: Run, full: Run) -> [Record] {
        let questions = task.prompts.flatMap { p in p.questions.map { (p.imageIDs, $0) } }
        return zip(questions, zip(run.observations, full.observations)).map { item, o in
            Record(images: item.0, slot: item.1.slot, question: item.1.text, expected: item.1.expected,
                   answer: o.0.answer, answer_full: o.1.answer)
        }
    }

    /// The summary of `run` against the full cache's run of the same task.
    public func compare(_ run: Run, full: Run) throws -> Summary {
        let n = run.observations.count
        guard n == full.observations.count, n > 0 else {
            throw KVCError("fidelity: \(n) questions observed with \(run.method) but \(full.observations.count) with the full cache")
        }
        var correct = 0, correctFull = 0, agree = 0, top1 = 0, kl = 0.0
        let layers = full.observations[0].attention.count
        var attentionError = [Double](repeating: 0, count: layers)
        for (m, f) in zip(run.observations, full.observations) {
            if m.answer == m.expected { correct += 1 }
            if f.answer == f.expected { correctFull += 1 }
            if m.answer == f.answer { agree += 1 }
            if m.logits.withUnsafeBufferPointer(Sampler.argmax) == f.logits.withUnsafeBufferPointer(Sampler.argmax) { top1 += 1 }
            kl += Self.klDivergence(full: f.logits, other: m.logits)
            for l in 0..<layers { attentionError[l] += Self.relativeError(m.attention[l], reference: f.attention[l]) }
        }
        let dn = Double(n)
        return Summary(method: run.method, ratio: run.ratio,
                       ratio_measured: run.visionBytesFull > 0 ? 1 - Double(run.visionBytes) / Double(run.visionBytesFull) : 0,
                       images: task.images, task: task.name, split: split.split.rawValue, n: n,
                       accuracy: Double(correct) / dn, accuracy_full: Double(correctFull) / dn,
                       agreement: Double(agree) / dn, top1_agreement: Double(top1) / dn, kl: kl / dn,
                       attn_rel_error: attentionError.map { $0 / dn },
                       kv_bytes: run.bytes / n, kv_bytes_full: run.bytesFull / n,
                       kv_bytes_vision: run.visionBytes / n, kv_bytes_vision_full: run.visionBytesFull / n,
                       questions_per_s: run.seconds > 0 ? dn / run.seconds : 0, seconds: run.seconds,
                       threads: model.backbone.model.threads)
    }

    /// KL(p_full || p_other) in nats between the softmax distributions of two logit vectors.
    static func klDivergence(full: [Float], other: [Float]) -> Double {
        func logSoftmax(_ x: [Float]) -> [Double] {
            let peak = Double(x.max() ?? 0)
            let logTotal = log(x.reduce(0.0) { $0 + exp(Double($1) - peak) }) + peak
            return x.map { Double($0) - logTotal }
        }
        let p = logSoftmax(full), q = logSoftmax(other)
        var kl = 0.0
        for i in p.indices { kl += exp(p[i]) * (p[i] - q[i]) }
        return max(0, kl)
    }

    /// ||x - reference|| / ||reference||.
    static func relativeError(_ x: [Float], reference: [Float]) -> Double {
        var diff = 0.0, norm = 0.0
        for i in reference.indices {
            diff += Double(x[i] - reference[i]) * Double(x[i] - reference[i])
            norm += Double(reference[i]) * Double(reference[i])
        }
        return norm > 0 ? (diff / norm).squareRoot() : 0
    }
}
