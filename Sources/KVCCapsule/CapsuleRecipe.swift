import Foundation
import KVCBackbone
import KVCCollect
import KVCCore

/// A `kind: capsule` recipe: fit the key reconstructor of one budget on collected caches, measure it on held-out
/// samples, and leave in `run_dir` the adapter checkpoint (`adapter.safetensors`, exported by `kvc-export`), the
/// per-layer report (`report.json`) and a copy of the recipe. See recipes/capsule-r0.6.yaml for every key.
public struct CapsuleRecipe {
    public var file: String
    public var text: String
    public var caches: String
    public var runDirectory: String
    public var fit: CapsuleFit
    public var reconstructor: String
    /// With `reconstructor.kind: mlp`: how the key MLP trains on top of the linear map.
    public var mlp: KeyResidualTraining.Options?
    /// The `layers:` section: settings for layer ranges, applied over the global ones (see `CapsuleLayerRecipe`).
    public var layerOverrides: [CapsuleLayerRecipe.Override]

    public init(_ recipe: RecipeSection, text: String) throws {
        file = recipe.file
        self.text = text
        _ = try recipe.string("kind", allowed: ["capsule"])
        let seed = try recipe.int("seed", default: 1, range: 0...Int(Int32.max))
        caches = try recipe.string("caches")
        runDirectory = try recipe.string("run_dir")
        let ratio = try recipe.double("ratio", range: 0...0.95)
        let keyRatio = try recipe.double("key_ratio", default: ratio, range: 0...0.95)
        guard (0...1).contains(2 * ratio - keyRatio) else {
            throw KVCError.file(file, "key_ratio: \(keyRatio) leaves the values a ratio of \(2 * ratio - keyRatio); "
                                + "it must be within [2 ratio - 1, 2 ratio] = [\(max(0, 2 * ratio - 1)), \(min(0.95, 2 * ratio))]")
        }
        let dtypes = StoragePrecision.allCases.map(\.rawValue)
        let keyDtype = StoragePrecision(rawValue: try recipe.string("key_dtype", default: "f16", allowed: dtypes))!
        let valueDtype = StoragePrecision(rawValue: try recipe.string("value_dtype", default: "f16", allowed: dtypes))!
        let policy = try recipe.string("retention", default: "strided", allowed: CapsuleLayerRecipe.policies)
        let retention = RetentionPolicy(name: policy)!
        let neighbours = try recipe.int("neighbours", default: 4, range: 1...8)
        var ridge = 1e-3
        reconstructor = "linear"
        if let r = try recipe.section("reconstructor") {
            reconstructor = try r.string("kind", default: "linear", allowed: ["linear", "nearest", "mlp"])
            ridge = try r.double("ridge", default: ridge, range: 0...1)
            if reconstructor == "mlp" {
                var o = KeyResidualTraining.Options()
                o.seed = UInt64(seed)
                o.hidden = try r.int("hidden", default: o.hidden, range: 4...1024)
                o.epochs = try r.int("epochs", default: o.epochs, range: 1...1000)
                o.batch = try r.int("batch", default: o.batch, range: 1...4096)
                o.learningRate = Float(try r.double("learning_rate", default: Double(o.learningRate), range: 1e-6...1))
                o.weightDecay = Float(try r.double("weight_decay", default: Double(o.weightDecay), range: 0...1))
                o.warmupSteps = try r.int("warmup_steps", default: o.warmupSteps, range: 0...100_000)
                o.klWeight = Float(try r.double("kl_weight", default: Double(o.klWeight), range: 0...1000))
                mlp = o
            }
            try r.finish()
        }
        let validationEvery = try recipe.int("validation_every", default: 5, range: 2...1000)
        let budget = CapsuleBudget(ratio: ratio, keyRatio: keyRatio, keyPrecision: keyDtype, valuePrecision: valueDtype)
        layerOverrides = try CapsuleLayerRecipe.overrides(in: recipe, global: CapsuleLayerSettings(
            budget: budget, policy: retention, reconstructor: KeyReconstructorKind(rawValue: reconstructor)!))
        try recipe.finish()
        fit = CapsuleFit(budget: budget, policy: retention, neighbours: neighbours, ridge: ridge, validationEvery: validationEvery)
    }

    public static func load(path: String) throws -> CapsuleRecipe {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return try CapsuleRecipe(RecipeSection.load(path: path), text: text)
    }

    public func run(ropeBase: Double, log: (String) -> Void = { print($0) }) throws {
        let store = try CacheStore(directory: caches, verifyChecksums: true)
        let m = store.manifest
        log(String(format: "capsule r=%.2f (keys %.2f, values %.2f) on %d cached samples from %@", fit.budget.ratio,
                   fit.budget.keyRatio, fit.budget.valueRatio, m.sampleCount, caches))
        var fit = fit
        fit.layers = try CapsuleLayerRecipe.expand(layerOverrides, layers: m.layout.layers, file: file,
                                                   global: CapsuleLayerSettings(budget: fit.budget, policy: fit.policy,
                                                                                reconstructor: KeyReconstructorKind(rawValue: reconstructor)!))
        let (model, layers) = try fit.run(store: store, ropeBase: ropeBase)
        let allNearest = (fit.layers?.map(\.reconstructor) ?? [KeyReconstructorKind(rawValue: reconstructor)!]).allSatisfy { $0 == .nearest }
        var settings = CapsuleSettings(budget: fit.budget, policy: fit.policy, neighbours: fit.neighbours,
                                       keys: allNearest ? .nearest : .linear(model), layers: fit.layers)
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        var mlpLayers: [KeyResidualTraining.LayerReport]?
        if let options = mlp {
            var samples: [CacheSample] = []
            try store.forEachSample { s in var s = s; s.values = []; samples.append(s) }   // values are not needed here
            let training = KeyResidualTraining(options: options, budget: fit.budget, policy: fit.policy, neighbours: fit.neighbours,
                                               validationEvery: fit.validationEvery, layers: fit.layers)
            // The checkpoint belongs to this recipe text and these caches; anything else must start over.
            let fingerprint = Checksum.xxh128(Data((text + m.fingerprint + String(m.sampleCount)).utf8))
            let (residual, reports) = try training.run(samples: samples, layout: m.layout, linear: model,
                                                       rope: RotaryEmbedding(headDim: m.layout.headDim, base: ropeBase),
                                                       checkpointPath: runDirectory + "/key-mlp-checkpoint.safetensors",
                                                       metricsPath: runDirectory + "/metrics.jsonl", fingerprint: fingerprint, log: log)
            settings.keyResidual = residual
            mlpLayers = reports
            let mean = { (f: (KeyResidualTraining.LayerReport) -> Double) in reports.map(f).reduce(0, +) / Double(max(reports.count, 1)) }
            log(String(format: "key MLP: kept in %d of %d layers; held-out mean key error linear %.4f -> %.4f, attention KL %.5f -> %.5f",
                       reports.filter(\.kept).count, reports.count, mean(\.keyErrorLinear), mean(\.keyErrorMLP),
                       mean(\.attentionKLLinear), mean(\.attentionKLMLP)))
        }
        let adapter = CapsuleAdapter(fingerprint: m.fingerprint, layers: m.layout.layers, kvHeads: m.layout.kvHeads,
                                     headDim: m.layout.headDim, ropeBase: ropeBase, settings: settings, recipe: text)
        try adapter.saveCheckpoint(to: runDirectory + "/adapter.safetensors")
        try AtomicFile.write(text, to: runDirectory + "/recipe.yaml")
        let plan = fit.budget.plan(tokens: 64, headDim: m.layout.headDim)
        // Layers are the same size: the capsule's measured ratio is over the sum of its layers' bytes.
        let layerPlans = (0..<m.layout.layers).map { fit.settings(layer: $0).plan(tokens: 64, headDim: m.layout.headDim) }
        let measured64 = 1 - Double(layerPlans.reduce(0) { $0 + $1.bytes }) / Double(layerPlans.reduce(0) { $0 + $1.fullBytes })
        if fit.layers != nil {
            log(String(format: "per-layer settings: measured ratio %.4f over all layers (nominal %.4f) for 64-token images",
                       measured64, fit.budget.ratio))
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        struct Report: Codable {
            var ratio: Double, keyRatio: Double, valueRatio: Double, measuredRatio64: Double, keptKeys64: Int, valueRank64: Int?
            var keyDtype: String, valueDtype: String, samples: Int, layers: [CapsuleFit.LayerReport]
            var mlpLayers: [KeyResidualTraining.LayerReport]?
        }
        try AtomicFile.write(try encoder.encode(Report(ratio: fit.budget.ratio, keyRatio: fit.budget.keyRatio,
                                                       valueRatio: fit.budget.valueRatio, measuredRatio64: measured64,
                                                       keptKeys64: plan.keptKeys, valueRank64: plan.valueRank,
                                                       keyDtype: fit.budget.keyPrecision.rawValue,
                                                       valueDtype: fit.budget.valuePrecision.rawValue, samples: m.sampleCount, layers: layers,
                                                       mlpLayers: mlpLayers)),
                             to: runDirectory + "/report.json")
        let mean = { (f: (CapsuleFit.LayerReport) -> Double) in layers.map(f).reduce(0, +) / Double(max(layers.count, 1)) }
        log(String(format: "held-out mean over %d layers: key rel. error linear %.3f, nearest %.3f; value rel. error %.3f; "
                   + "attention KL linear %.4f, nearest %.4f", layers.count, mean(\.keyErrorLinear), mean(\.keyErrorNearest),
                   mean(\.valueError), mean(\.attentionKLLinear), mean(\.attentionKLNearest)))
        log("adapter checkpoint: \(runDirectory)/adapter.safetensors (export with kvc-export \(runDirectory) -o FILE.kvcap)")
    }
}
