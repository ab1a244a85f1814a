import KVCBackbone
import KVCCapsule
import KVCCollector
import KVCCore
import KVCVision

/// Every cache `kvc-eval --method` and `kvc-sweep` know, by name, as a `CacheMethod` for the evaluation.
public enum MethodCatalog {
    public static let names = ["full", "capsule"] + BaselineMethod.allCases.map(\.rawValue)

    /// - Parameters:
    ///   - ratio: required by the baselines that take one; the capsule's comes from its adapter (a different one is
    ///     an error); ignored by `full`, `int8`, `int4`.
    ///   - adapter: the `.kvcap` file, required by `capsule` (checked against the model and front end).
    public static func method(named name: String, ratio: Double?, model: VisionLanguageModel, adapter: String? = nil,
                              modelPath: String, frontEndPath: String, seed: UInt64 = 0) throws -> CacheMethod {
        let config = model.backbone.model.config
        switch name {
        case "full":
            return .full(model)
        case "capsule":
            guard let adapter else { throw KVCError("method capsule needs --adapter FILE.kvcap") }
            let fingerprint = try CacheCollector.fingerprint(modelPath: modelPath, frontEndPath: frontEndPath).fingerprint
            let settings = try CapsuleAdapter.load(path: adapter, config: config, fingerprint: fingerprint).settings
            if let ratio, abs(ratio - settings.budget.ratio) > 1e-6 {
                throw KVCError.file(adapter, "adapter is fitted for ratio \(settings.budget.ratio), not the requested \(ratio)")
            }
            let rope = model.backbone.model.rope
            return CacheMethod(
                name: "capsule", ratio: settings.budget.ratio,
                makeCache: { CapsuleCache(config: config, rope: rope, settings: settings) },
                afterPrefill: { cache, prefix in
                    guard !prefix.grids.isEmpty, let capsule = cache as? CapsuleCache else { return }
                    try capsule.compress(imageGridsAtPositions: prefix.grids)
                },
                storedBytes: { ($0 as? CapsuleCache).map { $0.textBytes + $0.visionBytes } ?? $0.residentBytes },
                visionBytes: { cache, _ in
                    let c = cache as? CapsuleCache
                    return (c?.visionBytes ?? 0, c?.visionBytesFull ?? 0)
                })
        default:
            guard let baseline = BaselineMethod(rawValue: name) else {
                throw KVCError("unknown method '\(name)' (known: \(names.joined(separator: ", ")))")
            }
            guard let ratio = ratio ?? (baseline.hasFixedRatio ? 0 : nil) else { throw KVCError("method \(name) needs --ratio") }
            let compressor = try baseline.compressor(ratio: ratio, headDim: config.headDim, seed: seed)
            return CacheMethod(
                name: name, ratio: compressor.ratio,
                makeCache: { VisionSpanCache(config: config, compressor: compressor) },
                afterPrefill: { cache, prefix in
                    guard !prefix.grids.isEmpty, let c = cache as? VisionSpanCache else { return }
                    try c.compress(visionPositions: prefix.visionPositions)
                },
                storedBytes: { ($0 as? VisionSpanCache)?.storedBytes ?? $0.residentBytes },
                visionBytes: { cache, _ in
                    let c = cache as? VisionSpanCache
                    return (c?.visionBytes ?? 0, c?.visionBytesFull ?? 0)
                })
        }
    }
}
