import Foundation
import KVCCore
import KVCTensor

/// Stage 1 of the front end (DESIGN §3): the encoder learns to see shapes and colours as a classifier, with labels
/// derived from the training questions (`EasyVQALabels`), before it is aligned to the decoder.
///
/// The head pools the token grid two ways (mean and max over tokens, so both "how much of a colour" and "is there a
/// corner anywhere" are easy to read) and maps the concatenation to 3 shape logits and 8 colour logits. Only the
/// encoder is kept afterwards.
public final class ShapeColourHead: Module {
    public let classifier: Linear
    public static let shapeClasses = EasyVQAShape.allCases.count
    public static let colourClasses = EasyVQAColour.allCases.count

    public init(tokenDim: Int, rng: inout SeededRandom) {
        classifier = Linear(2 * tokenDim, Self.shapeClasses + Self.colourClasses, rng: &rng)
    }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        classifier.namedParameters.map { ("classifier.\($0.name)", $0.tensor) }
    }

    /// Logits [N, 3 + 8]: shape classes first, then colours.
    public func callAsFunction(_ tokens: ImageTokens) -> Tensor { classifier(tokens.meanAndMax) }
}

public enum ShapeColourPretraining {
    public struct Options: Sendable {
        public var epochs = 10
        public var batchSize = 32
        public var learningRate: Float = 2e-3
        public var weightDecay: Float = 1e-4
        public var warmupSteps = 50
        /// Random flips and 90° turns (the 8 symmetries of the square); they change neither shape nor colour.
        public var augment = true
        public var seed: UInt64 = 1
        public var progress = true
        public init() {}
    }

    /// One line of the metrics log.
    public struct EpochReport: Codable, Sendable {
        public let epoch: Int
        public let steps: Int
        public let trainLoss: Double
        public let trainSeconds: Double
        public let imagesPerSecond: Double
        public let test: Accuracy
    }

    public struct Accuracy: Codable, Sendable {
        public let shape: Double
        public let colour: Double
        public let both: Double
        /// Images the accuracies are over (those whose label the test questions determine).
        public let shapeImages: Int
        public let colourImages: Int
        public let bothImages: Int
    }

    /// Per-image class targets from the question-derived facts, `nil` where undetermined.
    public struct Targets {
        public let rows: [Int]
        public let shape: [Int?]
        public let colour: [Int?]

        /// Rows of `images` that have at least one determined label.
        public init(images: EasyVQAImages, labels: EasyVQALabels) {
            var rows: [Int] = [], shape: [Int?] = [], colour: [Int?] = []
            for (row, id) in images.ids.enumerated() {
                guard let f = labels.facts[id], f.shape != nil || f.colour != nil else { continue }
                rows.append(row)
                shape.append(f.shape)
                colour.append(f.colour)
            }
            (self.rows, self.shape, self.colour) = (rows, shape, colour)
        }
    }

    /// The whole stage: loads easy-VQA from `root`, trains a fresh encoder, writes one JSON line per epoch to
    /// `metricsPath` (if given), and saves the encoder to `output` (atomically, with the final test accuracy in
    /// its metadata). Returns the epoch reports.
    public static func run(root: String = Assets.easyVQA, output: String, metricsPath: String? = nil,
                           config: VisionEncoderConfig = .easyVQA, options: Options = Options()) throws -> [EpochReport] {
        let dataset = try EasyVQA(root: root)
        let loadStart = Date()
        let train = try dataset.load(.train, progress: options.progress)
        let test = try dataset.load(.test, progress: options.progress)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        for s in [train, test] where !s.skipped.isEmpty {
            FileHandle.standardError.write(Data(("easy-VQA \(s.split.rawValue): skipped \(s.skipped.count) entries:\n"
                + s.skipped.prefix(20).map { "  \($0)\n" }.joined()).utf8))
        }
        let trainLabels = EasyVQALabels(questions: train.questions, source: "train")
        let testLabels = EasyVQALabels(questions: test.questions, source: "test")
        print(String(format: "easy-VQA loaded in %.2f s: train %d images / %d questions, test %d images / %d questions",
                     loadSeconds, train.images.count, train.questions.count, test.images.count, test.questions.count))
        print("train labels: \(trainLabels.summary)")
        print("test labels: \(testLabels.summary)")

        var rng = SeededRandom(seed: options.seed)
        let encoder = try VisionEncoder(config: config, rng: &rng)
        let head = ShapeColourHead(tokenDim: config.tokenDim, rng: &rng)
        print("encoder: \(encoder.parameterCount) parameters, grid \(config.gridSide)x\(config.gridSide) of "
              + "\(config.tokenDim)-d tokens")
        let encoderJSON = JSONEncoder()
        encoderJSON.outputFormatting = [.sortedKeys]
        let statePath = output + ".train-state"
        let reports = try self.train(encoder: encoder, head: head, train: train, test: test, options: options,
                                     statePath: statePath) { all in
            let r = all.last!
            print(String(format: "epoch %d: loss %.4f, %.1f s (%.0f images/s), test shape %.2f%% colour %.2f%% both %.2f%%",
                         r.epoch, r.trainLoss, r.trainSeconds, r.imagesPerSecond, 100 * r.test.shape,
                         100 * r.test.colour, 100 * r.test.both))
            if let metricsPath {
                let lines = try all.map { String(decoding: try encoderJSON.encode($0), as: UTF8.self) + "\n" }
                try AtomicFile.write(lines.joined(), to: metricsPath)
            }
        }
        if let last = reports.last {
            try encoder.save(to: output, metadata: [
                "stage": "1 (shape/colour classifier on easy-VQA train)",
                "test_shape_accuracy": String(format: "%.4f", last.test.shape),
                "test_colour_accuracy": String(format: "%.4f", last.test.colour),
                "epochs": "\(options.epochs)", "seed": "\(options.seed)",
            ])
            try? FileManager.default.removeItem(atPath: statePath)   // the encoder file now marks the stage done
        }
        return reports
    }

    /// Trains `encoder` and `head` on the training split; evaluates on the test split after every epoch.
    /// `report` is called after each epoch with the reports so far (for a JSONL log). A non-finite loss stops
    /// training with an error naming the epoch and step. With `statePath`, the state after every epoch (parameters,
    /// optimizer moments, data-order random stream, reports) is saved there as a `TrainingCheckpoint`, and a run
    /// that finds one continues from it, bit-identically to an uninterrupted run.
    public static func train(encoder: VisionEncoder, head: ShapeColourHead, train: EasyVQASplit, test: EasyVQASplit,
                             options: Options = Options(), statePath: String? = nil,
                             report: ([EpochReport]) throws -> Void = { _ in }) throws -> [EpochReport] {
        precondition(train.images.side == encoder.config.imageSide,
                     "ShapeColourPretraining: images are \(train.images.side) px, encoder expects \(encoder.config.imageSide)")
        let targets = Targets(images: train.images, labels: EasyVQALabels(questions: train.questions))
        let testTargets = Targets(images: test.images, labels: EasyVQALabels(questions: test.questions))
        let stepsPerEpoch = (targets.rows.count + options.batchSize - 1) / options.batchSize
        let optimizer = AdamW(parameters: encoder.parameters + head.parameters, learningRate: options.learningRate,
                              weightDecay: options.weightDecay)
        let schedule = WarmupCosineSchedule(baseLR: options.learningRate, warmupSteps: options.warmupSteps,
                                            totalSteps: stepsPerEpoch * options.epochs, minLR: options.learningRate / 50)
        var rng = SeededRandom(seed: options.seed)
        var reports: [EpochReport] = []
        var step = 0
        let parameters = encoder.namedParameters.map { ("encoder.\($0.name)", $0.tensor) }
            + head.namedParameters.map { ("head.\($0.name)", $0.tensor) }
        // Everything that changes what an epoch computes; a saved state made under other options is refused.
        let optionsKey = "batch \(options.batchSize) lr \(options.learningRate) wd \(options.weightDecay) warmup "
            + "\(options.warmupSteps) augment \(options.augment) seed \(options.seed) epochs \(options.epochs)"
        if let statePath, FileManager.default.fileExists(atPath: statePath) {
            let saved = try TrainingCheckpoint.restore(from: statePath, parameters: parameters, optimizers: ["adamw": optimizer])
            guard saved.metadata["options"] == optionsKey else {
                throw KVCError.file(statePath, "saved under other stage-1 options (\(saved.metadata["options"] ?? "none")), "
                                    + "the recipe now says \(optionsKey): delete it to start stage 1 again")
            }
            guard let data = saved.random["data"], let json = saved.metadata["reports"],
                  let done = try? JSONDecoder().decode([EpochReport].self, from: Data(json.utf8)) else {
                throw KVCError.file(statePath, "stage-1 state lacks its data-order stream or epoch reports")
            }
            (rng, step, reports) = (data, saved.step, done)
        }
        for epoch in (reports.count + 1)..<(options.epochs + 1) {
            var order = Array(0..<targets.rows.count)
            rng.shuffle(&order)
            let meter = Progress("stage-1 epoch \(epoch)/\(options.epochs)", total: order.count, unit: "images",
                                 enabled: options.progress)
            let start = Date()
            var lossSum = 0.0
            for b in 0..<stepsPerEpoch {
                let batch = Array(order[b * options.batchSize..<min((b + 1) * options.batchSize, order.count)])
                let pixels = batchPixels(train.images, rows: batch.map { targets.rows[$0] },
                                         normalization: encoder.config.normalization,
                                         augment: options.augment, rng: &rng)
                optimizer.learningRate = schedule.learningRate(at: step)
                optimizer.zeroGrad()
                let loss = self.loss(head(encoder(pixels)), shape: batch.map { targets.shape[$0] },
                                     colour: batch.map { targets.colour[$0] })
                let value = loss.item
                guard value.isFinite else {
                    throw KVCError("stage-1 pretraining: loss is \(value) at epoch \(epoch), step \(b) "
                                   + "(global step \(step)); stopping without saving")
                }
                loss.backward()
                optimizer.step()
                lossSum += Double(value)
                step += 1
                meter.advance(by: batch.count, status: String(format: "loss %.4f", lossSum / Double(b + 1)))
            }
            let seconds = Date().timeIntervalSince(start)
            let accuracy = evaluate(encoder: encoder, head: head, images: test.images, targets: testTargets)
            let r = EpochReport(epoch: epoch, steps: stepsPerEpoch, trainLoss: lossSum / Double(stepsPerEpoch),
                                trainSeconds: seconds, imagesPerSecond: Double(targets.rows.count) / seconds,
                                test: accuracy)
            reports.append(r)
            if let statePath {
                try TrainingCheckpoint(step: step, parameters: parameters, optimizers: ["adamw": optimizer],
                                       random: ["data": rng],
                                       metadata: ["options": optionsKey,
                                                  "reports": String(decoding: try JSONEncoder().encode(reports), as: UTF8.self)])
                    .save(to: statePath)
            }
            try report(reports)
        }
        return reports
    }

    /// Cross-entropy on the shape logits over samples whose shape is known, plus the same for colour.
    static func loss(_ logits: Tensor, shape: [Int?], colour: [Int?]) -> Tensor {
        let nShape = ShapeColourHead.shapeClasses
        var total: Tensor?
        let shapeRows = shape.indices.filter { shape[$0] != nil }
        if !shapeRows.isEmpty {
            let l = crossEntropyLoss(logits: logits.slice(axis: 1, 0..<nShape).indexSelect(axis: 0, shapeRows),
                                     targets: shapeRows.map { shape[$0]! })
            total = l
        }
        let colourRows = colour.indices.filter { colour[$0] != nil }
        if !colourRows.isEmpty {
            let l = crossEntropyLoss(logits: logits.slice(axis: 1, nShape..<logits.shape[1]).indexSelect(axis: 0, colourRows),
                                     targets: colourRows.map { colour[$0]! })
            total = total.map { $0 + l } ?? l
        }
        return total ?? (logits.sum() * 0)
    }

    /// Shape, colour and joint accuracy over the images whose labels are determined.
    public static func evaluate(encoder: VisionEncoder, head: ShapeColourHead, images: EasyVQAImages,
                                targets: Targets, batchSize: Int = 100) -> Accuracy {
        var shapeRight = 0, shapeTotal = 0, colourRight = 0, colourTotal = 0, bothRight = 0, bothTotal = 0
        var rng = SeededRandom(seed: 0)
        Tensor.withNoGrad {
            for start in stride(from: 0, to: targets.rows.count, by: batchSize) {
                let idx = Array(start..<min(start + batchSize, targets.rows.count))
                let pixels = batchPixels(images, rows: idx.map { targets.rows[$0] },
                                         normalization: encoder.config.normalization, augment: false, rng: &rng)
                let logits = head(encoder(pixels))
                let classes = logits.shape[1], nShape = ShapeColourHead.shapeClasses
                for (k, i) in idx.enumerated() {
                    let row = logits.data + k * classes
                    let shape = argmax(row, 0..<nShape), colour = argmax(row, nShape..<classes) - nShape
                    if let s = targets.shape[i] { shapeTotal += 1; if s == shape { shapeRight += 1 } }
                    if let c = targets.colour[i] { colourTotal += 1; if c == colour { colourRight += 1 } }
                    if let s = targets.shape[i], let c = targets.colour[i] {
                        bothTotal += 1
                        if s == shape && c == colour { bothRight += 1 }
                    }
                }
            }
        }
        func ratio(_ a: Int, _ b: Int) -> Double { b == 0 ? 0 : Double(a) / Double(b) }
        return Accuracy(shape: ratio(shapeRight, shapeTotal), colour: ratio(colourRight, colourTotal),
                        both: ratio(bothRight, bothTotal), shapeImages: shapeTotal, colourImages: colourTotal,
                        bothImages: bothTotal)
    }

    /// Normalised pixels [rows.count, 3, side, side], each optionally under a random symmetry of the square.
    static func batchPixels(_ images: EasyVQAImages, rows: [Int], normalization: ImageNormalization, augment: Bool,
                            rng: inout SeededRandom) -> Tensor {
        let side = images.side, plane = side * side
        let t = Tensor(uninitializedShape: [rows.count, 3, side, side])
        var scratch = [Float](repeating: 0, count: 3 * plane)
        for (k, row) in rows.enumerated() {
            let dst = t.data + k * 3 * plane
            guard augment else { images.writeCHW(row: row, into: dst, normalization: normalization); continue }
            let symmetry = rng.nextInt(below: 8)
            scratch.withUnsafeMutableBufferPointer { s in
                images.writeCHW(row: row, into: s.baseAddress!, normalization: normalization)
                applySymmetry(symmetry, side: side, from: s.baseAddress!, to: dst)
            }
        }
        return t
    }
}

/// Writes `src` (3 planes of side x side) under symmetry `k` of the square: bit 0 flips x, bit 1 flips y, bit 2
/// swaps the axes.
fileprivate func applySymmetry(_ k: Int, side: Int, from src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>) {
    let plane = side * side, last = side - 1
    for c in 0..<3 {
        let s = src + c * plane, d = dst + c * plane
        for y in 0..<side {
            for x in 0..<side {
                var sx = k & 1 != 0 ? last - x : x
                var sy = k & 2 != 0 ? last - y : y
                if k & 4 != 0 { swap(&sx, &sy) }
                d[y * side + x] = s[sy * side + sx]
            }
        }
    }
}

fileprivate func argmax(_ p: UnsafePointer<Float>, _ range: Range<Int>) -> Int {
    var best = range.lowerBound
    for i in range where p[i] > p[best] { best = i }
    return best
}
