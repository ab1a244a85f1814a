import KVCCore

/// The `layers:` section of a capsule recipe: settings for some layers, over the recipe's global ones.
///
///     layers:
///       "0-5":   {ratio: 0.9}                       # a range of layer indices, inclusive
///       "13-27": {ratio: 0.76, key_ratio: 0.7}
///       29:      {retention: scored, reconstructor: nearest}   # one layer
///
/// Each entry may set `ratio`, `key_ratio`, `key_dtype`, `value_dtype`, `retention` and `reconstructor` (the kind:
/// linear, nearest, or mlp when the global reconstructor is mlp, whose training settings it uses). A layer that changes
/// `ratio` but not `key_ratio` moves both sides by the same amount (key ratio + the change). Ranges must not overlap.
/// Layers are the same size, so the capsule's ratio is the mean of its layers' ratios: it must equal the recipe's
/// `ratio` (within 0.005), which keeps the nominal ratio, the adapter header and the measured bytes in agreement.
public enum CapsuleLayerRecipe {
    public struct Override: Sendable {
        /// The section key, for errors.
        public var key: String
        public var layers: ClosedRange<Int>
        public var settings: CapsuleLayerSettings
    }

    static let policies = ["strided", "checkerboard", "scored"]
    /// Layer indices a selector may name (more than any backbone here has; `expand` checks the real count).
    static let maxLayers = 128

    /// Parses the `layers:` section of `recipe`, if any.
    public static func overrides(in recipe: RecipeSection, global: CapsuleLayerSettings) throws -> [Override] {
        let hint = "a selector is a layer index or an inclusive range 'a-b' with a <= b < \(maxLayers)"
        let found: RecipeSection?
        do { found = try recipe.section("layers") } catch let error as KVCError {
            throw KVCError(error.message + " (from layer selectors to settings; \(hint))")
        }
        guard let section = found else { return [] }
        var out: [Override] = []
        // Selectors are probed rather than listed because a recipe section only answers for keys it is asked about;
        // anything else is rejected by `finish()` with the selectors that were recognised.
        for a in 0..<maxLayers {
            for b in a..<maxLayers {
                let key = a == b ? "\(a)" : "\(a)-\(b)"
                guard section.has(key), let entry = try section.section(key) else { continue }
                out.append(Override(key: key, layers: a...b, settings: try settings(entry, global: global)))
            }
        }
        do {
            try section.finish()
        } catch let error as KVCError {
            throw KVCError(error.message + "; \(hint)")
        }
        for (i, x) in out.enumerated() {
            for y in out[(i + 1)...] where x.layers.overlaps(y.layers) {
                throw KVCError.file(section.file, "layers.\(x.key) and layers.\(y.key) both set layer "
                                    + "\(max(x.layers.lowerBound, y.layers.lowerBound)); ranges must not overlap")
            }
        }
        return out
    }

    private static func settings(_ r: RecipeSection, global: CapsuleLayerSettings) throws -> CapsuleLayerSettings {
        let g = global.budget
        let ratio = try r.double("ratio", default: g.ratio, range: 0...0.95)
        let keyRatio = try r.double("key_ratio", default: min(0.95, max(0, g.keyRatio + ratio - g.ratio)), range: 0...0.95)
        guard (0...1).contains(2 * ratio - keyRatio) else {
            throw KVCError.file(r.file, "\(r.path).key_ratio: \(keyRatio) leaves the values of these layers a ratio of "
                                + "\(2 * ratio - keyRatio); with ratio \(ratio) it must be within "
                                + "[\(max(0, 2 * ratio - 1)), \(min(0.95, 2 * ratio))]")
        }
        let dtypes = StoragePrecision.allCases.map(\.rawValue)
        let keyDtype = StoragePrecision(rawValue: try r.string("key_dtype", default: g.keyPrecision.rawValue, allowed: dtypes))!
        let valueDtype = StoragePrecision(rawValue: try r.string("value_dtype", default: g.valuePrecision.rawValue, allowed: dtypes))!
        let policy = RetentionPolicy(name: try r.string("retention", default: global.policy.rawValue, allowed: policies))!
        let kinds = global.reconstructor == .mlp ? ["linear", "nearest", "mlp"] : ["linear", "nearest"]
        let kind = try r.string("reconstructor", default: global.reconstructor.rawValue, allowed: kinds)
        try r.finish()
        return CapsuleLayerSettings(budget: CapsuleBudget(ratio: ratio, keyRatio: keyRatio, keyPrecision: keyDtype,
                                                          valuePrecision: valueDtype),
                                    policy: policy, reconstructor: KeyReconstructorKind(rawValue: kind)!)
    }

    /// One settings entry per layer, or nil when the recipe has no overrides. Checks the selectors against the layer
    /// count and the mean ratio against the recipe's.
    public static func expand(_ overrides: [Override], layers: Int, file: String,
                              global: CapsuleLayerSettings) throws -> [CapsuleLayerSettings]? {
        guard !overrides.isEmpty else { return nil }
        var out = Array(repeating: global, count: layers)
        for o in overrides {
            guard o.layers.upperBound < layers else {
                throw KVCError.file(file, "layers.\(o.key): the caches have \(layers) layers (0-\(layers - 1))")
            }
            for l in o.layers { out[l] = o.settings }
        }
        let mean = out.reduce(0) { $0 + $1.budget.ratio } / Double(layers)
        guard abs(mean - global.budget.ratio) <= 0.005 else {
            throw KVCError.file(file, "layers: the layers' ratios average \(String(format: "%.4f", mean)), the recipe's ratio is "
                                + "\(global.budget.ratio); move budget between layers so the mean stays at the ratio")
        }
        return out
    }
}
