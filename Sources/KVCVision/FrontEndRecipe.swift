import Foundation
import KVCBackbone
import KVCCore
import KVCGGUF
import KVCTensor
import KVCTokenizer

/// A `kind: front-end` recipe: stage 1 (encoder as a shape/colour classifier) unless its checkpoint exists or the run
/// fine-tunes a trained front end (`init_from`), then stage 2 (alignment through the frozen decoder), then the front
/// end copied to `output` and, with a `question_prompt` section, the learned question prompt next to it
/// (`QuestionPrompt.companionPath`). See recipes/frontend-easyvqa.yaml and frontend-easyvqa-question-prompt.yaml.
public struct FrontEndRecipe {
    public var file: String
    public var seed: UInt64
    public var model: String
    public var runDirectory: String
    public var output: String
    public var encoderCheckpoint: String
    public var pretraining: ShapeColourPretraining.Options
    public var projectorHidden: Int
    public var alignment: FrontEndAlignment.Options
    /// The text whose token embeddings start the learned question prompt (nil: no question prompt).
    public var questionPromptInitText: String?
    /// Whether the question prompt also steers every later layer (`QuestionPrompt.layerResidual`).
    public var questionPromptDeep = false
    public var questionPromptPlacement = QuestionPrompt.Placement.userTurn
    /// Stage 3a for a front end that reads the question (`conditioning:` section; 0 steps: none).
    public var conditioningPretraining = QuestionConditioningPretraining.Options()
    /// Where stage 3a's conditioning is kept: a rerun skips stage 3a when it exists.
    public var conditioningCheckpoint: String { runDirectory + "/conditioning-stage3a.safetensors" }

    public init(_ recipe: RecipeSection) throws {
        file = recipe.file
        _ = try recipe.string("kind", allowed: ["front-end"])
        seed = UInt64(try recipe.int("seed", default: 1, range: 0...Int(Int32.max)))
        model = try recipe.string("model", default: Assets.smolLM2GGUF)
        runDirectory = try recipe.string("run_dir")
        output = try recipe.string("output")
        let enc = try recipe.section("encoder")
        encoderCheckpoint = try enc?.string("checkpoint", default: runDirectory + "/encoder-stage1.safetensors")
            ?? runDirectory + "/encoder-stage1.safetensors"
        pretraining = ShapeColourPretraining.Options()
        pretraining.seed = seed
        if let e = enc {
            pretraining.epochs = try e.int("epochs", default: pretraining.epochs, range: 1...1000)
            pretraining.batchSize = try e.int("batch_size", default: pretraining.batchSize, range: 1...4096)
            pretraining.learningRate = Float(try e.double("learning_rate", default: Double(pretraining.learningRate), range: 1e-7...1))
            pretraining.weightDecay = Float(try e.double("weight_decay", default: Double(pretraining.weightDecay), range: 0...1))
            pretraining.warmupSteps = try e.int("warmup_steps", default: pretraining.warmupSteps, range: 0...1_000_000)
            pretraining.augment = try e.bool("augment", default: pretraining.augment)
            try e.finish()
        }
        let proj = try recipe.section("projector")
        projectorHidden = try proj?.int("hidden", default: 576, range: 1...16384) ?? 576
        try proj?.finish()
        alignment = FrontEndAlignment.Options()
        alignment.seed = seed
        if let a = try recipe.section("alignment") {
            alignment.steps = try a.int("steps", default: alignment.steps, range: 1...10_000_000)
            alignment.imagesPerStep = try a.int("images_per_step", default: alignment.imagesPerStep, range: 1...1024)
            alignment.questionsPerImage = try a.int("questions_per_image", default: alignment.questionsPerImage, range: 1...64)
            alignment.learningRate = Float(try a.double("learning_rate", default: Double(alignment.learningRate), range: 1e-8...1))
            alignment.minLearningRate = Float(try a.double("min_learning_rate", default: Double(alignment.minLearningRate), range: 0...1))
            alignment.warmupSteps = try a.int("warmup_steps", default: alignment.warmupSteps, range: 0...1_000_000)
            alignment.weightDecay = Float(try a.double("weight_decay", default: Double(alignment.weightDecay), range: 0...1))
            alignment.clipNorm = Float(try a.double("clip_norm", default: Double(alignment.clipNorm), range: 1e-6...1e6))
            alignment.encoderLearningRateScale = Float(try a.double("encoder_lr_scale", default: 0, range: 0...10))
            alignment.projectorLearningRateScale = Float(try a.double("projector_lr_scale", default: 1, range: 0...10))
            alignment.balanceYesNo = try a.bool("balance_yes_no", default: false)
            alignment.initFrom = a.has("init_from") ? try a.string("init_from") : nil
            alignment.conditioningHiddenTrains = try a.bool("conditioning_hidden_trains", default: false)
            alignment.conditioningLearningRateScale = Float(try a.double("conditioning_lr_scale", default: 1, range: 0...10))
            alignment.evalEvery = try a.int("eval_every", default: alignment.evalEvery, range: 1...1_000_000)
            alignment.evalQuestions = try a.int("eval_questions", default: alignment.evalQuestions, range: 1...100_000)
            alignment.checkpointEvery = try a.int("checkpoint_every", default: alignment.checkpointEvery, range: 1...1_000_000)
            try a.finish()
        }
        if let c = try recipe.section("conditioning") {
            alignment.conditioningHidden = try c.int("hidden", default: 256, range: 1...16384)
            conditioningPretraining.steps = try c.int("pretrain_steps", default: conditioningPretraining.steps, range: 0...10_000_000)
            conditioningPretraining.batchSize = try c.int("batch_size", default: conditioningPretraining.batchSize, range: 2...65536)
            conditioningPretraining.learningRate = Float(try c.double("learning_rate",
                                                                      default: Double(conditioningPretraining.learningRate),
                                                                      range: 1e-7...1))
            try c.finish()
        }
        conditioningPretraining.seed = seed
        if let q = try recipe.section("question_prompt") {
            let text = try q.string("init_text")
            guard !text.isEmpty, text.count <= 400 else {
                throw KVCError.file(file, "question_prompt.init_text must be 1 to 400 characters")
            }
            questionPromptInitText = text
            questionPromptDeep = try q.bool("deep", default: false)
            questionPromptPlacement = QuestionPrompt.Placement(rawValue: try q.string(
                "placement", default: "user-turn", allowed: QuestionPrompt.Placement.allCases.map(\.rawValue)))!
            alignment.questionPromptResidualLearningRateScale = Float(try q.double("residual_lr_scale", default: 1,
                                                                                   range: 0...1000))
            try q.finish()
        }
        try recipe.finish()
    }

    /// Runs both stages (each resumable), then writes the aligned front end to `output` (atomically).
    public func run(log: (String) -> Void = { print($0) }) throws {
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        if let start = alignment.initFrom {
            log("stage 1: skipped (fine-tuning \(start))")
        } else if !FileManager.default.fileExists(atPath: encoderCheckpoint) {
            log("stage 1: pretraining the encoder as a shape/colour classifier -> \(encoderCheckpoint)")
            _ = try ShapeColourPretraining.run(output: encoderCheckpoint, metricsPath: runDirectory + "/stage1-metrics.jsonl",
                                               options: pretraining)
        } else {
            log("stage 1: using \(encoderCheckpoint)")
        }
        let file = try GGUFFile(path: Assets.require(model))
        let fingerprint = try Checksum.xxh128(file: model)
        let graph = try LlamaGraph(file: file)
        let tokenizer = try BPETokenizer.fromGGUF(file)
        let dataset = try EasyVQA()
        let train = try dataset.load(.train), test = try dataset.load(.test)
        let frontEnd: FrontEnd
        if let start = alignment.initFrom {
            // Fine-tuning a trained front end: its encoder and projector replace stage 1's and the fresh projector.
            frontEnd = try FrontEnd.load(from: start, expectingBackbone: fingerprint)
            log("stage 2: fine-tuning \(start) through the frozen decoder")
        } else {
            let encoder = try VisionEncoder.load(from: encoderCheckpoint)
            var rng = SeededRandom(seed: seed &+ 2)
            let projector = Projector(inputDim: encoder.config.tokenDim, hiddenDim: projectorHidden,
                                      outputDim: graph.config.hiddenSize, rng: &rng)
            frontEnd = FrontEnd(encoder: encoder, projector: projector, backboneFingerprint: fingerprint)
            // Start projected tokens at the mean norm of the decoder's token embeddings.
            let sample = Tensor.withNoGrad { encoder(encoder.pixelTensor((0..<16).map { train.images.image(row: $0) })).tokens }
            projector.calibrate(on: sample, targetNorm: meanRowNorm(graph.tokenEmbedding))
            log(String(format: "stage 2: aligning the projector through the frozen decoder (output scale %.3f)",
                       projector.outputScale))
        }
        if let hidden = alignment.conditioningHidden {
            if let existing = frontEnd.conditioning {
                guard existing.hidden == hidden else {
                    throw KVCError.file(self.file, "alignment.conditioning_hidden is \(hidden) but the front end it starts "
                                        + "from already reads the question with width \(existing.hidden)")
                }
            } else {
                // Fresh conditioning adds nothing at first (its output layer is zero): training starts from the
                // front end's own tokens.
                var rng = SeededRandom(seed: seed &+ 3)
                let conditioning = QuestionConditioning(wordDim: graph.config.hiddenSize,
                                                        imageDim: frontEnd.encoder.config.tokenDim, hidden: hidden,
                                                        outputDim: graph.config.hiddenSize, rng: &rng)
                log("question conditioning: the image tokens read the question (width \(hidden))")
                if FileManager.default.fileExists(atPath: conditioningCheckpoint) {
                    try conditioning.load(from: conditioningCheckpoint)
                    log("stage 3a: using \(conditioningCheckpoint)")
                } else if conditioningPretraining.steps > 0 {
                    log("stage 3a: the conditioning learns yes/no from image and question -> \(conditioningCheckpoint)")
                    let report = try QuestionConditioningPretraining.run(
                        conditioning: conditioning, encoder: frontEnd.encoder, graph: graph, tokenizer: tokenizer,
                        train: train, test: test, options: conditioningPretraining, log: log)
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys]
                    try conditioning.save(to: conditioningCheckpoint, metadata: [
                        "kind": "kvc-question-conditioning-stage3a",
                        "report": String(decoding: try encoder.encode(report), as: UTF8.self)])
                }
                frontEnd.conditioning = conditioning
            }
        }
        var questionPrompt: QuestionPrompt?
        if let text = questionPromptInitText {
            let ids = tokenizer.encode(text)
            guard !ids.isEmpty, ids.count <= 256 else {
                throw KVCError.file(self.file, "question_prompt.init_text gives \(ids.count) tokens, expected 1 to 256")
            }
            let start = graph.embed(ids)
            // A deep prompt's residual vectors start at zero: at step 0 it is the shallow prompt of `init_text`. They
            // are learned in units of the stream's RMS per layer, measured on the plain prompt text.
            var residual: Tensor?, scale: [Float]?
            if questionPromptDeep {
                residual = Tensor.zeros([graph.config.layerCount - 1, ids.count, graph.config.hiddenSize], requiresGrad: true)
                let sample = tokenizer.encode("<|im_start|>user\nIs there a red shape in the image?" + text
                                              + "<|im_end|>\n<|im_start|>assistant\n")
                scale = graph.residualRMS(input: graph.embed(sample), lengths: [sample.count])
                log("question prompt: residual stream RMS per layer " + scale!.map { String(format: "%.2f", $0) }.joined(separator: " "))
            }
            questionPrompt = QuestionPrompt(tokens: Tensor(shape: start.shape, values: start.scalars, requiresGrad: true),
                                            layerResidual: residual, layerResidualScale: scale,
                                            placement: questionPromptPlacement, frontEndDigest: "", initText: text)
            log("question prompt: \(ids.count) learned tokens after the question\(questionPromptDeep ? ", steering every layer" : ""), "
                + "starting from \"\(text)\"")
        }
        let trainer = FrontEndAlignment(graph: graph, tokenizer: tokenizer, frontEnd: frontEnd, questionPrompt: questionPrompt,
                                        train: train, test: test, options: alignment, runDirectory: runDirectory)
        try trainer.run(log: log)
        let conditioningTrains = frontEnd.conditioning != nil && alignment.conditioningLearningRateScale > 0
        if let start = alignment.initFrom, alignment.projectorLearningRateScale == 0, alignment.encoderLearningRateScale == 0,
           !conditioningTrains, alignment.conditioningHidden == nil {
            // A frozen front end is copied byte for byte: re-serialising it could reorder its metadata, and caches,
            // adapters and the question prompt all name the file's digest.
            if start != output {
                guard let bytes = FileManager.default.contents(atPath: start) else {
                    throw KVCError.file(start, "cannot read the front end to copy it to \(output)")
                }
                try AtomicFile.write(bytes, to: output)
            }
            log("front end unchanged (frozen): \(output)")
        } else {
            try frontEnd.save(to: output)
            log("front end written to \(output)")
        }
        if let questionPrompt {
            // The prompt names the exact front-end file it was trained with; VisionLanguageModel refuses any other.
            questionPrompt.frontEndDigest = try Checksum.xxh128(file: output)
            let path = QuestionPrompt.companionPath(of: output)
            try questionPrompt.save(to: path)
            log("question prompt written to \(path)")
        }
    }
}
