import Dispatch
import Foundation
import KVCBackbone
import KVCCore

/// Greedy question answering over an easy-VQA split, the way `kvc-eval` reports it.
///
/// Questions are taken in file order (the first `limit` usable ones). Each image's prefix is prefilled once into a
/// fresh cache from `makeCache`; its questions then continue from that prefix, the cache being trimmed back to it
/// between questions (`VisionLanguageModel.answer(question:after:)`). Entries the dataset loader could not use are
/// counted and listed, never fatal.
public struct EasyVQAEvaluation {
    public struct Options {
        /// Evaluate at most this many questions (nil: all).
        public var limit: Int?
        /// Leave the image tokens out of every prompt (the blind baseline).
        public var blind = false
        /// Name of the cache in the summary.
        public var cacheName = "full"
        /// Where the front end came from, for the summary.
        public var frontEndPath: String?
        /// Write progress with an ETA to stderr.
        public var progress = false
        /// Images run through the front end together.
        public var frontEndBatch = 16
        /// Answer with the best of these labels (the data set's answers) at the first answer step
        /// (`ConstrainedAnswer`) instead of free greedy generation: the meaningful blind baseline. Nil: greedy.
        public var constrainedLabels: [String]?
        /// Prefill each image's prefix afresh for every question instead of sharing it: for caches whose compression
        /// depends on the question (a capsule with score-based retention compresses with the question's queries, so a
        /// shared prefix would keep the first question's choice for all).
        public var prefixPerQuestion = false
        /// Independent evaluation lanes: the images are split into this many contiguous runs, each answered on its own
        /// thread with its own caches (the model's weights are shared, read-only). A prefix of ~70 positions does not
        /// scale with BLAS or decoder threads, so on several cores lanes of one thread each (the caller sets those) are
        /// what uses them; the answers are the same as with one lane.
        public var lanes = 1
        public init() {}
    }

    /// One answered question (one JSON line of `--answers`).
    public struct Record: Codable, Equatable, Sendable {
        /// Image path relative to the dataset root, e.g. `test/images/12.png`.
        public var image: String
        public var question: String
        public var expected: String
        public var answer: String
        public var correct: Bool { answer == expected }
    }

    public struct Summary: Codable, Equatable, Sendable {
        public var task = "easy-vqa"
        public var split: String
        public var n: Int
        public var accuracy: Double
        /// Accuracy on the yes/no questions and on the others (shape and colour names). The yes/no ones can largely be
        /// answered from the text alone, so the others show best what the image tokens (and their cache) carry.
        public var accuracy_yes_no: Double?
        public var accuracy_open: Double?
        public var n_yes_no: Int?
        public var cache: String
        public var blind: Bool
        public var questions_per_second: Double
        public var seconds: Double
        /// Where the time went (totals, summed over lanes): front end over all images, image prefixes, question
        /// prefills, decoding.
        public var seconds_front_end: Double
        public var seconds_prefix: Double
        public var seconds_question: Double
        public var seconds_decode: Double
        /// Mean bytes the cache held at the end of a question (prefix, question and answer).
        public var kv_bytes: Int
        /// Mean bytes a full float16 cache holds for the same positions.
        public var kv_bytes_full: Int
        /// Dataset entries (rows, images) that could not be used.
        public var skipped: Int
        public var front_end: String?
        /// The decoder's weight-product arithmetic when it is not float32 (`WeightProducts`).
        public var weight_products: String?
        /// The learned question prompt's file, when the model has one.
        public var question_prompt: String?
        /// With a compressing cache: its nominal ratio, and the mean bytes of the vision span it held next to what a
        /// full float16 cache holds for the same span.
        public var ratio: Double?
        public var kv_bytes_vision: Int?
        public var kv_bytes_vision_full: Int?
        /// Answers chosen among the labels from first-step logits (`Options.constrainedLabels`).
        public var constrained: Bool?
        /// Evaluation lanes run side by side (`Options.lanes`), when more than one.
        public var lanes: Int?
    }

    public struct Result {
        public var records: [Record]
        public var summary: Summary
        public var skipped: [SkippedEntry]
    }

    public let model: VisionLanguageModel
    public var options: Options
    /// A fresh cache per image (default: the model's float16 `PlainKVCache`).
    public var makeCache: () -> KVCache
    /// Acts on each image's cache after its prefix is prefilled (for example to compress the vision span).
    public var afterPrefill: ((KVCache, VisionLanguageModel.Prefix) throws -> Void)?
    /// Bytes a cache holds, for `kv_bytes` (default: a `PlainKVCache`'s stored positions, else `residentBytes`).
    public var storedBytes: (KVCache) -> Int = { ($0 as? PlainKVCache)?.storedBytes ?? $0.residentBytes }
    /// For a compressing cache: (nominal ratio, bytes of the vision span held, full float16 bytes of that span).
    public var visionBytes: ((KVCache) -> (ratio: Double, held: Int, full: Int))?

    public init(model: VisionLanguageModel, options: Options = Options()) {
        self.model = model
        self.options = options
        makeCache = { model.backbone.model.makeCache() }
    }

    /// Evaluates `split`, calling `onRecord` after each answer.
    public func run(_ split: EasyVQASplit, onRecord: ((Record) -> Void)? = nil) throws -> Result {
        let questions = Array(split.questions.prefix(options.limit ?? Int.max))
        // Questions about one image are contiguous in easy-VQA, but group anyway so that each prefix is built once.
        var order: [Int] = [], byImage: [Int: [Int]] = [:]
        for (i, q) in questions.enumerated() {
            if byImage[q.imageID] == nil { order.append(q.imageID) }
            byImage[q.imageID, default: []].append(i)
        }
        let config = model.backbone.model.config
        let fullBytesPerPosition = config.layerCount * config.kvHeadCount * config.headDim * 2 * 2
        let meter = Progress("easy-VQA \(split.split.rawValue)\(options.blind ? " (blind)" : "")", total: questions.count,
                             unit: "questions", enabled: options.progress)
        let scorer = try options.constrainedLabels.map { try ConstrainedAnswer(labels: $0, tokenizer: model.backbone.tokenizer) }
        // Contiguous runs of images with about the same number of questions each, one per lane.
        let laneCount = max(1, min(options.lanes, order.count))
        var runs = [[Int]](repeating: [], count: laneCount)
        var assigned = 0
        for id in order {
            runs[min(laneCount - 1, assigned * laneCount / max(questions.count, 1))].append(id)
            assigned += byImage[id]!.count
        }
        let shared = LaneShared(meter: meter, onRecord: onRecord)
        let start = DispatchTime.now()
        var lanes: [Lane] = []
        if laneCount == 1 {
            lanes = [try answer(images: runs[0], split: split, questions: questions, byImage: byImage, scorer: scorer,
                                fullBytesPerPosition: fullBytesPerPosition, shared: shared)]
        } else {
            let outcomes = LaneOutcomes(count: laneCount)
            DispatchQueue.concurrentPerform(iterations: laneCount) { l in
                outcomes.store(l, Swift.Result {
                    try answer(images: runs[l], split: split, questions: questions, byImage: byImage, scorer: scorer,
                               fullBytesPerPosition: fullBytesPerPosition, shared: shared)
                })
            }
            lanes = try outcomes.all.map { try $0!.get() }
        }
        var total = Lane()
        for lane in lanes { total.add(lane) }
        var records = [Record?](repeating: nil, count: questions.count)
        for (i, record) in total.records { records[i] = record }
        let seconds = elapsed(start)
        let n = questions.count
        var summary = Summary(split: split.split.rawValue, n: n, accuracy: n > 0 ? Double(total.correct) / Double(n) : 0,
                              cache: options.cacheName, blind: options.blind,
                              questions_per_second: seconds > 0 ? Double(n) / seconds : 0, seconds: seconds,
                              seconds_front_end: total.frontEndSeconds, seconds_prefix: total.prefixSeconds,
                              seconds_question: total.questionSeconds, seconds_decode: total.decodeSeconds,
                              kv_bytes: n > 0 ? total.bytes / n : 0, kv_bytes_full: n > 0 ? total.fullBytes / n : 0,
                              skipped: split.skipped.count, front_end: options.frontEndPath)
        summary.question_prompt = model.questionPromptPath
        let products = model.backbone.model.weightProducts
        if products != .float32 { summary.weight_products = products.rawValue }
        if laneCount > 1 { summary.lanes = laneCount }
        let answered = records.compactMap { $0 }
        let yesNo = answered.filter { EasyVQA.isYesNo($0.expected) }
        let open = answered.filter { !EasyVQA.isYesNo($0.expected) }
        func accuracy(_ rs: [Record]) -> Double? { rs.isEmpty ? nil : Double(rs.filter(\.correct).count) / Double(rs.count) }
        summary.accuracy_yes_no = accuracy(yesNo)
        summary.accuracy_open = accuracy(open)
        summary.n_yes_no = yesNo.count
        if options.constrainedLabels != nil { summary.constrained = true }
        if let ratio = total.ratio, n > 0 {
            summary.ratio = ratio
            summary.kv_bytes_vision = total.visionHeld / n
            summary.kv_bytes_vision_full = total.visionFull / n
        }
        return Result(records: answered, summary: summary, skipped: split.skipped)
    }

    /// What one lane adds up: its records (by question index) and totals.
    private struct Lane {
        var records: [(Int, Record)] = []
        var correct = 0, bytes = 0, fullBytes = 0, visionHeld = 0, visionFull = 0
        var ratio: Double?
        var frontEndSeconds = 0.0, prefixSeconds = 0.0, questionSeconds = 0.0, decodeSeconds = 0.0

        mutating func add(_ other: Lane) {
            records += other.records
            correct += other.correct
            bytes += other.bytes
            fullBytes += other.fullBytes
            visionHeld += other.visionHeld
            visionFull += other.visionFull
            ratio = ratio ?? other.ratio
            frontEndSeconds += other.frontEndSeconds
            prefixSeconds += other.prefixSeconds
            questionSeconds += other.questionSeconds
            decodeSeconds += other.decodeSeconds
        }
    }

    /// The progress meter and the record callback, which the lanes take turns at. Records reach the callback in
    /// question order whatever the lanes' pace (a later lane's wait until the earlier ones catch up), so an answers
    /// file is the same with any number of lanes.
    private final class LaneShared: @unchecked Sendable {
        let meter: KVCCore.Progress
        let onRecord: ((Record) -> Void)?
        private let lock = NSLock()
        private var correct = 0
        private var pending: [Int: Record] = [:]
        private var next = 0

        init(meter: KVCCore.Progress, onRecord: ((Record) -> Void)?) {
            self.meter = meter
            self.onRecord = onRecord
        }

        func answered(_ index: Int, _ record: Record) {
            lock.lock()
            defer { lock.unlock() }
            if record.correct { correct += 1 }
            pending[index] = record
            while let ready = pending.removeValue(forKey: next) {
                onRecord?(ready)
                next += 1
            }
            meter.advance(status: String(format: "accuracy %.3f", Double(correct) / Double(meter.done + 1)))
        }
    }

    /// Each lane's outcome, stored from its own thread.
    private final class LaneOutcomes: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var all: [Swift.Result<Lane, Error>?]
        init(count: Int) { all = Array(repeating: nil, count: count) }
        func store(_ lane: Int, _ outcome: Swift.Result<Lane, Error>) {
            lock.lock()
            all[lane] = outcome
            lock.unlock()
        }
    }

    /// Answers every question about `images` (in order), front end batch by batch.
    private func answer(images order: [Int], split: EasyVQASplit, questions: [EasyVQA.Question],
                        byImage: [Int: [Int]], scorer: ConstrainedAnswer?, fullBytesPerPosition: Int,
                        shared: LaneShared) throws -> Lane {
        var lane = Lane()
        for chunk in stride(from: 0, to: order.count, by: max(1, options.frontEndBatch)) {
            let ids = Array(order[chunk..<min(chunk + max(1, options.frontEndBatch), order.count)])
            let images = ids.map { split.images.image(row: split.images.row(of: $0)!) }
            // A front end that reads the question makes each question's image tokens, so each gets its own prefix.
            let questionAware = !options.blind && model.frontEnd.readsQuestion
            let t0 = DispatchTime.now()
            let embeddings = options.blind || questionAware ? ids.map { _ in [Float]() } : model.frontEnd.embed(images)
            lane.frontEndSeconds += elapsed(t0)
            for (b, id) in ids.enumerated() {
                func prefillImage(for question: String) throws -> VisionLanguageModel.PrefilledPrefix {
                    var tokens = embeddings[b]
                    if questionAware {
                        let t = DispatchTime.now()
                        tokens = try model.imageEmbeddings([images[b]], question: question)[0]
                        lane.frontEndSeconds += elapsed(t)
                    }
                    let prefilled = try model.prefill(imageEmbeddings: tokens.isEmpty ? [] : [tokens], question: question,
                                                      cache: makeCache(), afterPrefill: afterPrefill)
                    lane.prefixSeconds += prefilled.timing.prefillSeconds
                    return prefilled
                }
                var prefix: VisionLanguageModel.PrefilledPrefix?
                for i in byImage[id]! {
                    let q = questions[i]
                    let prefilled = try (options.prefixPerQuestion || questionAware ? nil : prefix) ?? prefillImage(for: q.text)
                    prefix = prefilled
                    let text: String
                    if let scorer {
                        let t = DispatchTime.now()
                        text = scorer.choose(logits: try model.firstAnswerLogits(question: q.text, after: prefilled))
                        lane.questionSeconds += elapsed(t)
                    } else {
                        let answer = try model.answer(question: q.text, after: prefilled)
                        text = answer.text
                        lane.questionSeconds += answer.timing.prefillSeconds
                        lane.decodeSeconds += answer.timing.decodeSeconds
                    }
                    let record = Record(image: "\(split.split.rawValue)/images/\(id).png", question: q.text,
                                        expected: q.answer, answer: text)
                    lane.records.append((i, record))
                    if record.correct { lane.correct += 1 }
                    lane.bytes += storedBytes(prefilled.cache)
                    lane.fullBytes += prefilled.cache.length * fullBytesPerPosition
                    if let v = visionBytes?(prefilled.cache) {
                        lane.ratio = v.ratio
                        lane.visionHeld += v.held
                        lane.visionFull += v.full
                    }
                    shared.answered(i, record)
                }
            }
        }
        return lane
    }
}
