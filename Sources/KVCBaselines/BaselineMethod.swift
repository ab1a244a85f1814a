import KVCCore

/// The baselines by name, as `kvc-eval --method` and `kvc-sweep` take them.
public enum BaselineMethod: String, CaseIterable, Sendable {
    case int8, int4, strided, random, h2o, snapkv, fastv, pca

    /// Quantization has a fixed ratio (its format); every other baseline is set to the requested one.
    public var hasFixedRatio: Bool { self == .int8 || self == .int4 }

    /// The compressor at `ratio` (ignored by the quantizers), for a model with `headDim` and `layerCount`.
    public func compressor(ratio: Double, headDim: Int, seed: UInt64 = 0) throws -> SpanCompressor {
        guard hasFixedRatio || (0..<1).contains(ratio) else { throw KVCError("\(rawValue): ratio \(ratio) is outside [0, 1)") }
        switch self {
        case .int8: return try TokenQuantization(bits: 8, headDim: headDim)
        case .int4: return try TokenQuantization(bits: 4, groupSize: min(32, headDim), headDim: headDim)
        case .strided: return StridedDropping(ratio: ratio)
        case .random: return RandomDropping(ratio: ratio, seed: seed)
        case .h2o: return H2OEviction(ratio: ratio)
        case .snapkv: return SnapKVEviction(ratio: ratio)
        case .fastv: return FastVPruning(ratio: ratio)
        case .pca: return KeyValuePCA(ratio: ratio)
        }
    }
}
