import Foundation
import KVCBackbone
import KVCCore
import KVCTensor
import KVCTokenizer

/// Stage 3a of the front end: the question conditioning learns to answer yes/no questions from the pooled image
/// features and the question's words, through a linear yes/no head on its hidden layer, before it learns (stage 3b,
/// `FrontEndAlignment`) to write that answer into the image tokens for the frozen decoder.
///
/// The same split as stages 1 and 2: stage 1 taught the encoder to see, cheaply, without the decoder; here the
/// comparison of question and image is learned in the same way (thousands of questions a second, the encoder frozen
/// and its pooled features computed once), so the expensive steps through the decoder only have to learn the
/// read-out. Yes and no are drawn equally often, so the question's words alone score 50%.
public enum QuestionConditioningPretraining {
    public struct Options: Codable, Equatable, Sendable {
        public var steps = 1500
        public var batchSize = 256
        public var learningRate: Float = 3e-3
        public var weightDecay: Float = 1e-4
        public var seed: UInt64 = 1
        public init() {}
    }

    public struct Report: Codable, Sendable {
        public var steps: Int
        public var trainLoss: Double
        /// Yes/no accuracy of the head on every yes/no question of the test split.
        public var testYesNoAccuracy: Double
        public var testQuestions: Int
        public var seconds: Double
    }

    /// Trains `conditioning` (its `output` layer untouched) with a fresh yes/no head; returns the test accuracy.
    public static func run(conditioning: QuestionConditioning, encoder: VisionEncoder, graph: LlamaGraph,
                           tokenizer: BPETokenizer, train: EasyVQASplit, test: EasyVQASplit, options: Options,
                           log: (String) -> Void = { print($0) }) throws -> Report {
        let start = Date()
        let trainSet = try Examples(split: train, encoder: encoder, graph: graph, tokenizer: tokenizer)
        let testSet = try Examples(split: test, encoder: encoder, graph: graph, tokenizer: tokenizer)
        var rng = SeededRandom(seed: options.seed &+ 0x3A)
        let head = Linear(conditioning.hidden, 2, rng: &rng)
        let trained = [conditioning.wordIn, conditioning.questionIn, conditioning.imageIn].flatMap(\.parameters)
            + head.parameters
        let frozenOutput = conditioning.output.parameters.map(\.requiresGrad)
        for p in conditioning.output.parameters { p.requiresGrad = false }
        defer { for (p, r) in zip(conditioning.output.parameters, frozenOutput) { p.requiresGrad = r } }
        for p in trained { p.requiresGrad = true }
        let optimizer = AdamW(parameters: trained, learningRate: options.learningRate, weightDecay: options.weightDecay)
        let schedule = WarmupCosineSchedule(baseLR: options.learningRate, warmupSteps: min(50, options.steps / 10),
                                            totalSteps: options.steps, minLR: options.learningRate / 20)
        let yes = trainSet.indices(answer: true), no = trainSet.indices(answer: false)
        guard !yes.isEmpty, !no.isEmpty else { throw KVCError("question conditioning: the training split has no yes/no questions") }
        let progress = Progress("question conditioning", total: options.steps, unit: "steps")
        var recent: [Double] = []
        for step in 0..<options.steps {
            optimizer.learningRate = schedule.learningRate(at: step)
            let batch = (0..<options.batchSize).map { k -> Int in
                let pool = k % 2 == 0 ? yes : no
                return pool[rng.nextInt(below: pool.count)]
            }
            optimizer.zeroGrad()
            let logits = head(trainSet.mixed(batch, conditioning: conditioning))
            let loss = crossEntropyLoss(logits: logits, targets: batch.map { trainSet.isYes[$0] ? 1 : 0 })
            let value = Double(loss.data[0])
            try NumericalFault.checkLoss(value, step: step + 1, context: "question conditioning")
            loss.backward()
            _ = clipGradNorm(trained, maxNorm: 1)
            optimizer.step()
            recent = Array((recent + [value]).suffix(50))
            progress.advance(status: String(format: "loss %.4f", recent.reduce(0, +) / Double(recent.count)))
        }
        let accuracy: Double = Tensor.withNoGrad {
            var correct = 0
            for chunk in stride(from: 0, to: testSet.count, by: 1024) {
                let rows = Array(chunk..<min(chunk + 1024, testSet.count))
                let logits = head(testSet.mixed(rows, conditioning: conditioning))
                for (r, i) in rows.enumerated() where (logits.data[2 * r + 1] > logits.data[2 * r]) == testSet.isYes[i] {
                    correct += 1
                }
            }
            return Double(correct) / Double(max(testSet.count, 1))
        }
        let report = Report(steps: options.steps, trainLoss: recent.reduce(0, +) / Double(max(recent.count, 1)),
                            testYesNoAccuracy: accuracy, testQuestions: testSet.count,
                            seconds: Date().timeIntervalSince(start))
        log(String(format: "question conditioning: test yes/no accuracy %.4f on %d questions (%.0f s)",
                   accuracy, testSet.count, report.seconds))
        return report
    }

    /// The yes/no questions of a split with everything the conditioning reads, computed once: the pooled encoder
    /// features of every image and the token ids of every question.
    struct Examples {
        let pooled: Tensor            // [images, 2 * dim]
        let imageRow: [Int]           // per question: its image's row in `pooled`
        let words: [[Int]]
        let isYes: [Bool]
        let graph: LlamaGraph
        var count: Int { isYes.count }

        init(split: EasyVQASplit, encoder: VisionEncoder, graph: LlamaGraph, tokenizer: BPETokenizer) throws {
            self.graph = graph
            let images = split.images
            var parts: [Tensor] = []
            Tensor.withNoGrad {
                for chunk in stride(from: 0, to: images.count, by: 64) {
                    let pixels = images.pixelTensor(rows: Array(chunk..<min(chunk + 64, images.count)),
                                                    normalization: encoder.config.normalization)
                    parts.append(encoder(pixels).meanAndMax)
                }
            }
            pooled = Tensor.concat(parts, axis: 0)
            let questions = split.questions.filter { $0.isYesNo && images.row(of: $0.imageID) != nil }
            imageRow = questions.map { images.row(of: $0.imageID)! }
            words = questions.map { tokenizer.encode($0.text) }
            isYes = questions.map { $0.answer == "yes" }
            guard !words.contains(where: \.isEmpty) else { throw KVCError("question conditioning: a question has no tokens") }
        }

        func indices(answer: Bool) -> [Int] { isYes.indices.filter { isYes[$0] == answer } }

        /// The conditioning's hidden layer for the questions `rows`.
        func mixed(_ rows: [Int], conditioning: QuestionConditioning) -> Tensor {
            var ids: [Int] = [], pairs: [(words: Range<Int>, image: Int)] = []
            for (k, i) in rows.enumerated() {
                pairs.append((ids.count..<(ids.count + words[i].count), k))
                ids += words[i]
            }
            let images = pooled.indexSelect(axis: 0, rows.map { imageRow[$0] })
            return conditioning.mixed(pooledImages: images, words: graph.embed(ids), pairs: pairs)
        }
    }
}
