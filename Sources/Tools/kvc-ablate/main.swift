import ArgumentParser
import Foundation
import KVCCapsule
import KVCCollect
import KVCCore

/// Offline ablations of a capsule adapter on held-out collected caches (logic in KVCCapsule.CapsuleAblation).
struct KVCAblate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-ablate",
        abstract: "What each part of a capsule buys, measured on held-out collected caches.",
        discussion: """
        For the adapter's budget: keys evicted / nearest copy / linear / linear+MLP, values PCA vs dropped at the same \
        bytes, and rows with exact keys or exact values that isolate each side. Metric: relative error of the attention \
        output softmax(qK^T/sqrt(d))V of the collected text queries over the vision span, and the KL of the attention \
        weights, against the full cache; per layer and overall. --splits refits the linear map for each key ratio at the \
        same r (the K/V split sweep). --layers adds the per-layer reconstruction error table (keys linear vs nearest, \
        values). Held-out = every 5th sample, as kvc-train holds them out.
        Example: kvc-ablate --adapter checkpoints/capsule-r0.6.kvcap --splits 0.3,0.4,0.5,0.6,0.7 --layers \
        --out checkpoints/results/ablation-r0.6.json
        """)

    @Option(help: "The capsule adapter (.kvcap).") var adapter: String
    @Option(help: "Collected caches (kvc-collect), the ones the adapter was trained on.") var caches: String = "runs/caches-train"
    @Option(help: "Held-out samples to measure on.") var samples: Int = 30
    @Option(help: "Key ratios for the K/V split sweep, comma-separated (empty: no sweep).") var splits: String = ""
    @Flag(help: "Add the per-layer reconstruction error table (refits the linear map once).") var layers = false
    @Option(help: "Write the results as JSON to this file.") var out: String?

    func run() throws {
        let capsule = try CapsuleAdapter.load(path: adapter)
        let store = try CacheStore(directory: caches, verifyChecksums: false)
        guard store.manifest.fingerprint == capsule.fingerprint else {
            throw KVCError.file(caches, "caches are from backbone \(store.manifest.fingerprint), the adapter from \(capsule.fingerprint)")
        }
        guard samples > 0 else { throw ValidationError("--samples must be positive") }
        let keyRatios = try splits.split(separator: ",").map { s -> Double in
            guard let v = Double(s.trimmingCharacters(in: .whitespaces)), (0...0.95).contains(v),
                  (0...1).contains(2 * capsule.settings.budget.ratio - v) else {
                throw ValidationError("--splits: '\(s)' is not a key ratio in [max(0, 2r - 1), min(0.95, 2r)] for r = \(capsule.settings.budget.ratio)")
            }
            return v
        }
        let ablation = CapsuleAblation(settings: capsule.settings, ropeBase: capsule.ropeBase, samples: samples)
        let held = try ablation.heldOut(store)
        let budget = capsule.settings.budget
        print(String(format: "adapter %@: r = %.2f, key ratio %.2f (%@), values %@; %d held-out samples", adapter, budget.ratio,
                     budget.keyRatio, budget.keyPrecision.rawValue, budget.valuePrecision.rawValue, held.count))
        let variants = try ablation.variants(on: held, layout: store.manifest.layout)
        print("variant | bytes/span | output rel. error | attention KL | layer 0 output error")
        for v in variants {
            print(String(format: "%@ | %@ | %.4f | %@ | %.4f", v.name, v.bytesPerSpan.map(String.init) ?? "-", v.outputError,
                         v.attentionKL.map { String(format: "%.5f", $0) } ?? "-", v.perLayerOutputError.first ?? 0))
        }
        let sweep = try ablation.splitSweep(store: store, held: held, keyRatios: keyRatios) { print($0) }
        var perLayer: [CapsuleFit.LayerReport]?
        if layers {
            let fit = CapsuleFit(budget: budget, policy: capsule.settings.policy, neighbours: capsule.settings.neighbours)
            perLayer = try fit.run(store: store, ropeBase: capsule.ropeBase, progress: false).layers
            print("layer | key error linear | key error nearest | value error | KL linear | KL nearest")
            for l in perLayer! {
                print(String(format: "%d | %.4f | %.4f | %.4f | %.5f | %.5f", l.layer, l.keyErrorLinear, l.keyErrorNearest,
                             l.valueError, l.attentionKLLinear, l.attentionKLNearest))
            }
        }
        if let out {
            struct Results: Encodable {
                var adapter: String, ratio: Double, keyRatio: Double, keyDtype: String, valueDtype: String, heldOutSamples: Int
                var variants: [CapsuleAblation.Variant], splitSweep: [CapsuleAblation.SplitPoint]
                var perLayer: [CapsuleFit.LayerReport]?
                enum CodingKeys: String, CodingKey {
                    case adapter, ratio, keyRatio = "key_ratio", keyDtype = "key_dtype", valueDtype = "value_dtype"
                    case heldOutSamples = "held_out_samples", variants, splitSweep = "split_sweep", perLayer = "per_layer"
                }
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let data = try encoder.encode(Results(adapter: adapter, ratio: budget.ratio, keyRatio: budget.keyRatio,
                                                  keyDtype: budget.keyPrecision.rawValue, valueDtype: budget.valuePrecision.rawValue,
                                                  heldOutSamples: held.count, variants: variants, splitSweep: sweep,
                                                  perLayer: perLayer))
            try FileManager.default.createDirectory(atPath: (out as NSString).deletingLastPathComponent.isEmpty ? "." :
                                                    (out as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try AtomicFile.write(data, to: out)
            print("wrote \(out)")
        }
    }
}

do {
    var command = try KVCAblate.parseAsRoot()
    try command.run()
} catch let error as KVCError {
    FileHandle.standardError.write(Data("kvc-ablate: error: \(error)\n".utf8))
    exit(1)
} catch {
    KVCAblate.exit(withError: error)
}
