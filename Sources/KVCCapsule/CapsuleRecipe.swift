import Foundation
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

    public init(_ recipe: RecipeSection, text: String) throws {
        file = recipe.file
        self.text = text
        _ = try recipe.string("kind", allowed: ["capsule"])
        _ = try recipe.int("seed", default: 1, range: 0...Int(Int32.max))
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
        let policy = try recipe.string("retention", default: "strided", allowed: ["strided", "checkerboard", "scored"])
        guard let retention = RetentionPolicy(name: policy), retention == .strided else {
            throw KVCError.file(file, "retention: '\(policy)' needs attention scores at compression time, not supported yet; use strided")
        }
        let neighbours = try recipe.int("neighbours", default: 4, range: 1...8)
        var ridge = 1e-3
        reconstructor = "linear"
        if let r = try recipe.section("reconstructor") {
            reconstructor = try r.string("kind", default: "linear", allowed: ["linear", "nearest"])
            ridge = try r.double("ridge", default: ridge, range: 0...1)
            try r.finish()
        }
        let validationEvery = try recipe.int("validation_every", default: 5, range: 2...1000)
        try recipe.finish()
        fit = CapsuleFit(budget: CapsuleBudget(ratio: ratio, keyRatio: keyRatio, keyPrecision: keyDtype, valuePrecision: valueDtype), policy: retention, neighbours: neighbours,
                         ridge: ridge, validationEvery: validationEvery)
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
        let (model, layers) = try fit.run(store: store, ropeBase: ropeBase)
        let settings = CapsuleSettings(budget: fit.budget, policy: fit.policy, neighbours: fit.neighbours,
                                       keys: reconstructor == "linear" ? .linear(model) : .nearest)
        let adapter = CapsuleAdapter(fingerprint: m.fingerprint, layers: m.layout.layers, kvHeads: m.layout.kvHeads,
                                     headDim: m.layout.headDim, ropeBase: ropeBase, settings: settings, recipe: text)
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        try adapter.saveCheckpoint(to: runDirectory + "/adapter.safetensors")
        try AtomicFile.write(text, to: runDirectory + "/recipe.yaml")
        let plan = fit.budget.plan(tokens: 64, headDim: m.layout.headDim)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        struct Report: Codable {
            var ratio: Double, keyRatio: Double, valueRatio: Double, measuredRatio64: Double, keptKeys64: Int, valueRank64: Int?
            var keyDtype: String, valueDtype: String, samples: Int, layers: [CapsuleFit.LayerReport]
        }
        try AtomicFile.write(try encoder.encode(Report(ratio: fit.budget.ratio, keyRatio: fit.budget.keyRatio,
                                                       valueRatio: fit.budget.valueRatio, measuredRatio64: plan.measuredRatio,
                                                       keptKeys64: plan.keptKeys, valueRank64: plan.valueRank,
                                                       keyDtype: fit.budget.keyPrecision.rawValue,
                                                       valueDtype: fit.budget.valuePrecision.rawValue, samples: m.sampleCount, layers: layers)),
                             to: runDirectory + "/report.json")
        let mean = { (f: (CapsuleFit.LayerReport) -> Double) in layers.map(f).reduce(0, +) / Double(max(layers.count, 1)) }
        log(String(format: "held-out mean over %d layers: key rel. error linear %.3f, nearest %.3f; value rel. error %.3f; "
                   + "attention KL linear %.4f, nearest %.4f", layers.count, mean(\.keyErrorLinear), mean(\.keyErrorNearest),
                   mean(\.valueError), mean(\.attentionKLLinear), mean(\.attentionKLNearest)))
        log("adapter checkpoint: \(runDirectory)/adapter.safetensors (export with kvc-export \(runDirectory) -o FILE.kvcap)")
    }
}
