import Foundation
import KVCBackbone
import KVCCore
import KVCTensor
import KVCTokenizer

/// Stage 2 of the front end (DESIGN §3): align the projector (and optionally the encoder) to the frozen decoder on
/// easy-VQA, with the loss on the answer tokens through every decoder layer. With a `QuestionPrompt`, its learned
/// tokens after the question train too (alone, when `projectorLearningRateScale` is 0 and the encoder is frozen).
///
/// Each step takes `imagesPerStep` training images and up to `questionsPerImage` of their questions, packed as prompt
/// trees (`LlamaGraph.Packing`): the prefix with the image tokens runs once per image and every question continues it,
/// so a step costs about one prefix per image instead of one per question. A front end that reads the question
/// (`FrontEnd.conditioning`) gives each question its own prefix instead (`imagePrefixes`). The answer tokens are
/// teacher-forced and followed by `<|im_end|>`, all of them targets.
///
/// Everything is a function of the seed and the step number, so a run cut off and resumed from its last checkpoint
/// continues exactly where it stopped.
public final class FrontEndAlignment {
    public struct Options: Codable, Equatable, Sendable {
        public var steps = 600
        public var imagesPerStep = 8
        public var questionsPerImage = 6
        public var learningRate: Float = 1e-3
        public var minLearningRate: Float = 1e-4
        public var warmupSteps = 20
        public var weightDecay: Float = 0.01
        public var clipNorm: Float = 1
        /// Also update the encoder, at `encoderLearningRateScale` x the base rate (0 = frozen encoder).
        public var encoderLearningRateScale: Float = 0
        /// The projector's rate as a multiple of the base rate (0 = frozen projector: only a question prompt trains).
        public var projectorLearningRateScale: Float = 1
        /// A deep question prompt's residual vectors' rate as a multiple of the base rate. They start at zero and must
        /// grow to the scale of the residual stream, far above the input embeddings', so they learn faster.
        public var questionPromptResidualLearningRateScale: Float = 1
        /// Sample each image's yes/no questions so that, for every question text, "yes" and "no" are equally likely
        /// (`AnswerBalance`). Without it the decoder can score most yes/no questions from the text alone and never
        /// learns to look at the image for them.
        public var balanceYesNo = false
        /// A trained front end to start from instead of a freshly calibrated projector (fine-tuning).
        public var initFrom: String?
        /// Width of the question conditioning to give the front end (`QuestionConditioning`; nil: none, unless the
        /// front end it starts from has one).
        public var conditioningHidden: Int?
        /// The question conditioning's rate as a multiple of the base rate.
        public var conditioningLearningRateScale: Float = 1
        /// Whether the conditioning's hidden layer trains here too (false: only its read-out `output`).
        public var conditioningHiddenTrains = false
        public var evalEvery = 50
        public var evalQuestions = 300
        public var checkpointEvery = 25
        public var seed: UInt64 = 1
        public init() {}

        enum CodingKeys: String, CodingKey {
            case steps, imagesPerStep = "images_per_step", questionsPerImage = "questions_per_image"
            case learningRate = "learning_rate", minLearningRate = "min_learning_rate", warmupSteps = "warmup_steps"
            case weightDecay = "weight_decay", clipNorm = "clip_norm", encoderLearningRateScale = "encoder_lr_scale"
            case projectorLearningRateScale = "projector_lr_scale"
            case questionPromptResidualLearningRateScale = "question_prompt_residual_lr_scale"
            case balanceYesNo = "balance_yes_no", initFrom = "init_from"
            case conditioningHidden = "conditioning_hidden", conditioningLearningRateScale = "conditioning_lr_scale"
            case conditioningHiddenTrains = "conditioning_hidden_trains"
            case evalEvery = "eval_every", evalQuestions = "eval_questions", checkpointEvery = "checkpoint_every", seed
        }
    }

    public struct StepReport: Codable, Sendable {
        public var step: Int
        public var loss: Double
        public var learningRate: Double
        public var gradNorm: Double
        public var seconds: Double
        public var questions: Int
        public var rows: Int
        /// First-answer-token accuracy on the held-out questions, when evaluated at this step.
        public var evalAccuracy: Double?
        /// The same on the held-out yes/no questions alone, and on the others.
        public var evalYesNoAccuracy: Double?
        public var evalOpenAccuracy: Double?
    }

    public let graph: LlamaGraph
    public let tokenizer: BPETokenizer
    public let frontEnd: FrontEnd
    /// Learned tokens after the question, trained with the front end (nil: the plain prompt).
    public let questionPrompt: QuestionPrompt?
    public let options: Options
    public let runDirectory: String
    private let prompt: VisionPrompt
    private let train: EasyVQASplit
    private let test: EasyVQASplit
    private let trainByImage: [Int: [EasyVQA.Question]]
    private let trainImageIDs: [Int]
    private let balance: AnswerBalance
    private let prefixText: Tensor
    private let closeText: Tensor

    public init(graph: LlamaGraph, tokenizer: BPETokenizer, frontEnd: FrontEnd, questionPrompt: QuestionPrompt? = nil,
                train: EasyVQASplit, test: EasyVQASplit, options: Options, runDirectory: String) {
        self.graph = graph
        self.tokenizer = tokenizer
        self.frontEnd = frontEnd
        self.questionPrompt = questionPrompt
        self.options = options
        self.runDirectory = runDirectory
        self.train = train
        self.test = test
        var prompt = VisionPrompt(tokenizer: tokenizer)
        if let questionPrompt { prompt.questionPromptPlacement = questionPrompt.placement }
        self.prompt = prompt
        trainByImage = Dictionary(grouping: train.questions.filter { train.images.row(of: $0.imageID) != nil }, by: \.imageID)
        trainImageIDs = trainByImage.keys.sorted()
        balance = AnswerBalance(train.questions)
        prefixText = graph.embed(prompt.userStart + prompt.imageOpen)
        closeText = graph.embed(prompt.imageClose)
    }

    private var checkpointPath: String { runDirectory + "/frontend.safetensors" }
    /// The question prompt of the run's front end checkpoint (`QuestionPrompt.companionPath`).
    public var questionPromptCheckpointPath: String { QuestionPrompt.companionPath(of: checkpointPath) }
    /// Parameters + AdamW moments + step in one atomically written file (`TrainingCheckpoint`): what resuming reads.
    private var trainingStatePath: String { runDirectory + "/train-state.safetensors" }
    /// The run state of builds before `TrainingCheckpoint` (step only); resumed from with a warning.
    private var legacyStatePath: String { runDirectory + "/state.json" }
    private var metricsPath: String { runDirectory + "/metrics.jsonl" }

    /// Trains until `options.steps`, resuming from the run directory's checkpoint if there is one.
    public func run(log: (String) -> Void = { print($0) }) throws {
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        // Each trained part has its own optimizer, at its multiple of the base learning rate; frozen parts take no
        // gradients at all.
        var parts: [(name: String, parameters: [Tensor], scale: Float)] = [
            ("projector", frontEnd.projector.parameters, options.projectorLearningRateScale),
            ("encoder", frontEnd.encoder.parameters, options.encoderLearningRateScale),
        ]
        if let conditioning = frontEnd.conditioning {
            // After stage 3a the hidden layer already answers; by default only the read-out into the tokens learns
            // here, so the decoder's noisier gradients cannot wear the comparison away.
            let readOut = conditioning.output.parameters
            let rest = [conditioning.wordIn, conditioning.questionIn, conditioning.imageIn].flatMap(\.parameters)
            parts.append(("conditioning", readOut, options.conditioningLearningRateScale))
            parts.append(("conditioning_hidden", rest,
                          options.conditioningHiddenTrains ? options.conditioningLearningRateScale : 0))
        }
        if let questionPrompt {
            parts.append(("question_prompt", [questionPrompt.tokens], 1))
            if let residual = questionPrompt.layerResidual {
                parts.append(("question_prompt_residual", [residual], options.questionPromptResidualLearningRateScale))
            }
        }
        var groups: [String: AdamW] = [:], scaled: [(AdamW, Float)] = []
        for part in parts {
            for p in part.parameters { p.requiresGrad = part.scale > 0 }
            guard part.scale > 0 else { continue }
            // The question prompt's tokens are embeddings: decaying them toward zero would only shrink them.
            let decay = part.name.hasPrefix("question_prompt") ? 0 : options.weightDecay
            let optimizer = AdamW(parameters: part.parameters, learningRate: options.learningRate, weightDecay: decay)
            groups[part.name] = optimizer
            scaled.append((optimizer, part.scale))
        }
        guard !scaled.isEmpty else {
            throw KVCError("front-end alignment: nothing to train (projector_lr_scale and encoder_lr_scale are 0 and there "
                           + "is no question prompt)")
        }
        let (start, resumedFirstLoss) = try resume(optimizers: groups, log: log)
        var firstLoss = resumedFirstLoss, lastCheckpoint = start
        let schedule = WarmupCosineSchedule(baseLR: options.learningRate, warmupSteps: options.warmupSteps,
                                            totalSteps: options.steps, minLR: options.minLearningRate)
        let progress = Progress("align front end", total: max(options.steps - start, 0), unit: "steps")
        for step in start..<max(options.steps, start) {
            let t0 = Date()
            let lr = schedule.learningRate(at: step)
            for (optimizer, scale) in scaled { optimizer.learningRate = lr * scale }
            let batch = makeBatch(step: step)
            let (lossValue, norm) = try trainStep(batch, step: step, optimizers: scaled.map(\.0))
            firstLoss = firstLoss ?? lossValue
            try checkDivergence(loss: lossValue, firstLoss: firstLoss!, step: step + 1, lastCheckpoint: lastCheckpoint)
            var report = StepReport(step: step + 1, loss: lossValue, learningRate: Double(lr), gradNorm: Double(norm),
                                    seconds: Date().timeIntervalSince(t0), questions: batch.questions, rows: batch.input.shape[0])
            if (step + 1) % options.evalEvery == 0 || step + 1 == options.steps {
                let eval = evaluateFirstToken(limit: options.evalQuestions)
                report.evalAccuracy = eval.all
                report.evalYesNoAccuracy = eval.yesNo
                report.evalOpenAccuracy = eval.open
                log(String(format: "step %d: loss %.4f, held-out first-token accuracy %.3f (yes/no %.3f, other %.3f)",
                           step + 1, lossValue, eval.all, eval.yesNo, eval.open))
            }
            try appendMetrics(report)
            if (step + 1) % options.checkpointEvery == 0 || step + 1 == options.steps {
                // The training state first: it alone decides where a resumed run starts.
                var metadata = ["options": try optionsFingerprint()]
                metadata["first_loss_bits"] = firstLoss.map { String($0.bitPattern) }
                try TrainingCheckpoint(step: step + 1, parameters: trainedNamedParameters, optimizers: groups,
                                       metadata: metadata).save(to: trainingStatePath)
                lastCheckpoint = step + 1
                try frontEnd.save(to: checkpointPath)
                try questionPrompt?.save(to: questionPromptCheckpointPath)
            }
            progress.advance(status: String(format: "loss %.4f", lossValue))
        }
    }

    /// Everything the run's state holds: the front end and the question prompt.
    private var trainedNamedParameters: [(name: String, tensor: Tensor)] {
        frontEnd.namedParameters + (questionPrompt?.namedParameters.map { ("question_prompt.\($0.name)", $0.tensor) } ?? [])
    }

    /// A loss this far above where the run started means the run diverged (typically a learning rate too high):
    /// it stops, naming the step, before anything of it is saved. The limit is `divergenceFactor` x the first step's
    /// loss, and never below ln(vocabulary) (a uniform guess), which no working projector exceeds.
    static let divergenceFactor = 3.0

    private func checkDivergence(loss: Double, firstLoss: Double, step: Int, lastCheckpoint: Int) throws {
        let limit = max(Self.divergenceFactor * firstLoss, Foundation.log(Double(graph.config.vocabularySize)))
        guard loss <= limit else {
            throw KVCError(String(format: "front-end alignment diverged: loss %.4f at step %d exceeds %.4f (%.0f x the first "
                                  + "step's %.4f, at least ln(vocabulary)); nothing after step %d is saved; lower "
                                  + "learning_rate or raise warmup_steps", loss, step, limit, Self.divergenceFactor, firstLoss,
                                  lastCheckpoint))
        }
    }

    /// Restores parameters and optimizer state from the run directory; returns the step to start at and the first
    /// step's loss (the divergence reference) if the run had one.
    private func resume(optimizers: [String: AdamW], log: (String) -> Void) throws -> (step: Int, firstLoss: Double?) {
        if FileManager.default.fileExists(atPath: trainingStatePath) {
            let saved = try TrainingCheckpoint.restore(from: trainingStatePath, parameters: trainedNamedParameters,
                                                       optimizers: optimizers)
            let current = try optionsFingerprint()
            if let before = saved.metadata["options"], before != current {
                throw KVCError.file(trainingStatePath, "this run was started with other alignment options (\(before)), "
                                    + "the recipe now says \(current); resuming would mix two runs: restore the recipe, "
                                    + "or use another run_dir")
            }
            try truncateMetrics(after: saved.step)
            log("resuming from step \(saved.step) (\(trainingStatePath))")
            return (saved.step, saved.metadata["first_loss_bits"].flatMap(UInt64.init).map(Double.init(bitPattern:)))
        }
        if let data = FileManager.default.contents(atPath: legacyStatePath),
           let state = try? JSONDecoder().decode([String: Int].self, from: data), let step = state["step"] {
            try frontEnd.load(from: checkpointPath)
            try truncateMetrics(after: step)
            log("resuming from step \(step) (\(checkpointPath), parameters only: this run state predates the optimizer "
                + "checkpoint, so the result will differ slightly from an uninterrupted run)")
            return (step, nil)
        }
        try truncateMetrics(after: 0)   // lines of a run killed before its first checkpoint
        return (0, nil)
    }

    /// The options that decide the numbers a step computes, as sorted JSON. Run length, evaluation and checkpoint
    /// cadence are left out: extending a run or evaluating more often does not change what the steps compute.
    private func optionsFingerprint() throws -> String {
        var o = options
        o.steps = 0; o.evalEvery = 0; o.evalQuestions = 0; o.checkpointEvery = 0
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(o), as: UTF8.self)
    }

    /// One optimisation step on `batch`; stops on a non-finite loss or gradient, naming the step.
    func trainStep(_ batch: Batch, step: Int, optimizers: [AdamW]) throws -> (loss: Double, gradNorm: Float) {
        for o in optimizers { o.zeroGrad() }
        let logits = graph.logits(input: batch.input, packing: batch.packing, logitRows: batch.rows,
                                  steering: steering(promptRows: batch.promptRows, totalRows: batch.input.shape[0]))
        let loss = crossEntropyLoss(logits: logits, targets: batch.targets)
        let value = Double(loss.data[0])
        try NumericalFault.checkLoss(value, step: step + 1, context: "front-end alignment")
        loss.backward()
        let norm = clipGradNorm(optimizers.flatMap(\.parameters), maxNorm: options.clipNorm)
        if !norm.isFinite {
            try NumericalFault.checkGradients(trainedNamedParameters, step: step + 1, context: "front-end alignment")
            throw KVCError("front-end alignment: gradient norm is \(norm) at step \(step + 1); stopping (the last good "
                           + "checkpoint is kept)")
        }
        for o in optimizers { o.step() }
        try NumericalFault.checkValues(trainedNamedParameters, step: step + 1, context: "front-end alignment")
        return (value, norm)
    }

    // MARK: Batches

    struct Batch {
        var input: Tensor
        var packing: LlamaGraph.Packing
        var rows: [Int]
        var targets: [Int]
        var questions: Int
        /// First row of each question prompt in `input` (empty without one).
        var promptRows: [Int] = []
    }

    /// The deep question prompt's residual vectors routed to its rows of a packed batch (nil for a shallow prompt).
    private func steering(promptRows: [Int], totalRows: Int) -> LlamaGraph.Steering? {
        guard let questionPrompt, let perLayer = questionPrompt.scaledLayerResidual else { return nil }
        let n = questionPrompt.count
        let selection = Tensor.zeros([totalRows, n])
        for start in promptRows {
            for p in 0..<n { selection.data[(start + p) * n + p] = 1 }
        }
        return LlamaGraph.Steering(selection: selection, perLayer: perLayer)
    }

    /// The images of `step`: position `step * imagesPerStep + b` of the epoch's seeded permutation.
    func makeBatch(step: Int) -> Batch {
        let n = trainImageIDs.count
        var ids: [Int] = []
        for b in 0..<options.imagesPerStep {
            let i = step * options.imagesPerStep + b
            ids.append(trainImageIDs[permutation(epoch: i / n, count: n)[i % n]])
        }
        var rng = SeededRandom(seed: options.seed &* 1_000_003 &+ UInt64(step))
        let pixels = train.images.pixelTensor(rows: ids.map { train.images.row(of: $0)! },
                                              normalization: frontEnd.encoder.config.normalization)
        var chosen: [[EasyVQA.Question]] = []
        for id in ids {
            var qs = trainByImage[id]!
            if options.balanceYesNo {
                qs = balance.sample(qs, count: options.questionsPerImage, rng: &rng)
            } else {
                rng.shuffle(&qs)
                qs = Array(qs.prefix(options.questionsPerImage))
            }
            chosen.append(qs)
        }
        let tree = imagePrefixes(pixels: pixels, questions: chosen.map { $0.map(\.text) })
        var pieces: [Tensor] = [], groups: [LlamaGraph.Packing.Group] = []
        var rows: [Int] = [], targets: [Int] = [], promptRows: [Int] = []
        var offset = 0
        for (tokens, members) in tree {
            pieces += [prefixText, tokens, closeText]
            let prefix = prefixText.shape[0] + tokens.shape[0] + closeText.shape[0]
            offset += prefix
            var suffixes: [Int] = []
            for (b, k) in members {
                let (suffix, promptStart, answerTargets) = suffixRows(question: chosen[b][k])
                pieces.append(suffix)
                if let promptStart { promptRows.append(offset + promptStart) }
                let length = suffix.shape[0]
                // The last prompt row predicts the first answer token; each answer row predicts the next.
                let firstTarget = length - answerTargets.count
                for (k, t) in answerTargets.enumerated() {
                    rows.append(offset + firstTarget + k)
                    targets.append(t)
                }
                suffixes.append(length)
                offset += length
            }
            groups.append(.init(prefix: prefix, suffixes: suffixes))
        }
        return Batch(input: Tensor.concat(pieces, axis: 0), packing: .init(groups: groups), rows: rows, targets: targets,
                     questions: chosen.map(\.count).reduce(0, +), promptRows: promptRows)
    }

    /// The image-token rows of each prompt-tree prefix and the questions `(image, index)` that continue it. Tokens
    /// that do not depend on the question give one prefix per image shared by its questions; a front end that reads
    /// the question gives every question its own prefix, with the image's tokens plus that question's offset.
    func imagePrefixes(pixels: Tensor, questions: [[String]]) -> [(tokens: Tensor, members: [(image: Int, question: Int)])] {
        guard frontEnd.readsQuestion else {
            let imageTokens = frontEnd(pixels)   // [B, tokens, hidden]
            return questions.indices.map { b in
                (imageTokens.slice(axis: 0, b..<(b + 1)).reshaped([frontEnd.tokensPerImage, graph.config.hiddenSize]),
                 questions[b].indices.map { (b, $0) })
            }
        }
        var ids: [Int] = [], pairs: [(words: Range<Int>, image: Int)] = [], members: [(Int, Int)] = []
        for (b, texts) in questions.enumerated() {
            for (k, text) in texts.enumerated() {
                let words = tokenizer.encode(text)
                pairs.append((ids.count..<(ids.count + words.count), b))
                ids += words
                members.append((b, k))
            }
        }
        let tokens = frontEnd.tokens(pixels: pixels, words: graph.embed(ids), pairs: pairs)
        return zip(tokens, members).map { ($0, [$1]) }
    }

    /// Suffix rows (question, question prompt, assistant prompt, then every answer token: each predicts the next
    /// target) and the targets of its final rows: the answer tokens followed by end-of-turn.
    func suffixRows(question q: EasyVQA.Question) -> (rows: Tensor, promptStart: Int?, targets: [Int]) {
        let answer = prompt.answer(q.answer, tokenizer: tokenizer)
        let targets = answer + (prompt.endOfTurn.map { [$0] } ?? [])
        // Targets sit on the last prompt row and every answer row: targets.count rows ending at the last row.
        let (rows, promptStart) = suffixRows(question: q.text, then: answer)
        return (rows, promptStart, targets)
    }

    /// The embedded suffix of `question` followed by `extra` tokens, and the row where the question prompt starts;
    /// the question prompt's rows are its own tensor, so gradients reach it.
    private func suffixRows(question: String, then extra: [Int] = []) -> (rows: Tensor, promptStart: Int?) {
        guard let questionPrompt else {
            return (graph.embed(prompt.plainSuffix(question, tokenizer: tokenizer) + extra), nil)
        }
        let (before, after) = prompt.aroundQuestionPrompt(question, tokenizer: tokenizer)
        let rest = after + extra
        let parts = [graph.embed(before), questionPrompt.tokens] + (rest.isEmpty ? [] : [graph.embed(rest)])
        return (Tensor.concat(parts, axis: 0), before.count)
    }

    private func permutation(epoch: Int, count: Int) -> [Int] {
        var order = Array(0..<count)
        var rng = SeededRandom(seed: options.seed &+ 0xE90C &* UInt64(epoch + 1))
        rng.shuffle(&order)
        return order
    }

    // MARK: Evaluation and logs

    /// First-answer-token accuracy: overall, on the yes/no questions, and on the others.
    public struct HeldOutAccuracy: Sendable {
        public var all: Double
        public var yesNo: Double
        public var open: Double
    }

    /// Fraction of `limit` held-out test questions (a fixed seeded subset) whose greedy first answer token is right.
    public func evaluateFirstToken(limit: Int) -> HeldOutAccuracy {
        var qs = test.questions.filter { test.images.row(of: $0.imageID) != nil }
        var rng = SeededRandom(seed: 12345)
        rng.shuffle(&qs)
        qs = Array(qs.prefix(limit))
        let byImage = Dictionary(grouping: qs, by: \.imageID).sorted { $0.key < $1.key }
        // [yes/no, other] x [correct, total]
        var counts = [[0, 0], [0, 0]]
        Tensor.withNoGrad {
            for chunk in stride(from: 0, to: byImage.count, by: 16) {
                let part = byImage[chunk..<min(chunk + 16, byImage.count)]
                let pixels = test.images.pixelTensor(rows: part.map { test.images.row(of: $0.key)! },
                                                     normalization: frontEnd.encoder.config.normalization)
                let tree = imagePrefixes(pixels: pixels, questions: part.map { $0.value.map(\.text) })
                var pieces: [Tensor] = [], groups: [LlamaGraph.Packing.Group] = [], rows: [Int] = [], expected: [Int] = []
                var kinds: [Int] = [], promptRows: [Int] = []
                var offset = 0
                for (tokens, members) in tree {
                    pieces += [prefixText, tokens, closeText]
                    let prefix = prefixText.shape[0] + tokens.shape[0] + closeText.shape[0]
                    offset += prefix
                    var suffixes: [Int] = []
                    for (b, k) in members {
                        let q = part[part.startIndex + b].value[k]
                        let (suffix, promptStart) = suffixRows(question: q.text)
                        if let promptStart { promptRows.append(offset + promptStart) }
                        pieces.append(suffix)
                        offset += suffix.shape[0]
                        rows.append(offset - 1)
                        expected.append(prompt.answer(q.answer, tokenizer: tokenizer)[0])
                        kinds.append(q.isYesNo ? 0 : 1)
                        suffixes.append(suffix.shape[0])
                    }
                    groups.append(.init(prefix: prefix, suffixes: suffixes))
                }
                let input = Tensor.concat(pieces, axis: 0)
                let logits = graph.logits(input: input, packing: .init(groups: groups), logitRows: rows,
                                          steering: steering(promptRows: promptRows, totalRows: input.shape[0]))
                let vocab = graph.config.vocabularySize
                for (r, want) in expected.enumerated() {
                    let row = logits.data + r * vocab
                    var best = 0
                    for j in 1..<vocab where row[j] > row[best] { best = j }
                    counts[kinds[r]][0] += best == want ? 1 : 0
                    counts[kinds[r]][1] += 1
                }
            }
        }
        func rate(_ c: Int, _ n: Int) -> Double { n > 0 ? Double(c) / Double(n) : 0 }
        return HeldOutAccuracy(all: rate(counts[0][0] + counts[1][0], counts[0][1] + counts[1][1]),
                               yesNo: rate(counts[0][0], counts[0][1]), open: rate(counts[1][0], counts[1][1]))
    }

    /// Drops metric lines of steps after the checkpoint, which the resumed run repeats.
    private func truncateMetrics(after step: Int) throws {
        guard let text = try? String(contentsOfFile: metricsPath, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            guard let r = try? JSONDecoder().decode(StepReport.self, from: Data(line.utf8)) else { return false }
            return r.step <= step
        }
        try AtomicFile.write(kept.map { $0 + "\n" }.joined(), to: metricsPath)
    }

    private func appendMetrics(_ report: StepReport) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var line = try encoder.encode(report)
        line.append(0x0A)
        if !FileManager.default.fileExists(atPath: metricsPath) {
            FileManager.default.createFile(atPath: metricsPath, contents: nil)
        }
        guard let handle = FileHandle(forWritingAtPath: metricsPath) else {
            throw KVCError.file(metricsPath, "cannot open for appending")
        }
        defer { try? handle.close() }
        handle.seekToEndOfFile()
        handle.write(line)
    }
}
