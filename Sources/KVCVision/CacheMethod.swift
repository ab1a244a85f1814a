import KVCBackbone

/// A way of holding the KV cache that an evaluation compares with the full float16 cache: how to make one per
/// prompt, what to do after the image prefix is prefilled (compress), and how to count its bytes.
public struct CacheMethod {
    public var name: String
    /// Nominal fraction of the float16 vision-span bytes removed (0 for the full cache).
    public var ratio: Double
    public var makeCache: () -> KVCache
    public var afterPrefill: ((KVCache, VisionLanguageModel.Prefix) throws -> Void)?
    /// Bytes the cache holds as the method counts them (text plus encoded vision span).
    public var storedBytes: (KVCache) -> Int
    /// Bytes of the vision span held, and what the full float16 cache holds for it.
    public var visionBytes: (KVCache, VisionLanguageModel.Prefix) -> (held: Int, full: Int)

    public init(name: String, ratio: Double, makeCache: @escaping () -> KVCache,
                afterPrefill: ((KVCache, VisionLanguageModel.Prefix) throws -> Void)?,
                storedBytes: @escaping (KVCache) -> Int,
                visionBytes: @escaping (KVCache, VisionLanguageModel.Prefix) -> (held: Int, full: Int)) {
        self.name = name
        self.ratio = ratio
        self.makeCache = makeCache
        self.afterPrefill = afterPrefill
        self.storedBytes = storedBytes
        self.visionBytes = visionBytes
    }

    /// The full float16 `PlainKVCache`, the reference.
    public static func full(_ model: VisionLanguageModel) -> CacheMethod {
        let c = model.backbone.model.config
        let perToken = c.layerCount * c.kvHeadCount * c.headDim * 2 * 2
        return CacheMethod(name: "full", ratio: 0, makeCache: { model.backbone.model.makeCache() }, afterPrefill: nil,
                           storedBytes: { ($0 as? PlainKVCache)?.storedBytes ?? $0.residentBytes },
                           visionBytes: { _, prefix in
                               let n = prefix.visionPositions.count * perToken
                               return (n, n)
                           })
    }
}
