import Foundation
import KVCBackbone
import KVCCore

/// A trained capsule adapter: what `kvc-export` writes to a `.kvcap` file and the inference module loads.
///
/// Payload tensors: for every neighbour configuration `c` seen in training, `linear.<c>.coefficients`
/// (F16 `[layers * kv_heads, slots, head_dim / 2, 2]`, complex coefficients) and `linear.<c>.fitted` (U8
/// `[layers * kv_heads]`: 0 where that layer/head never saw the configuration). The metadata holds the backbone
/// (fingerprint, layers, KV heads, head dim, RoPE base), the budget, the retention policy, the configurations' offsets,
/// and the recipe text. With a key MLP (`keys: "linear+mlp"`, header `mlp_hidden`), also `mlp.scales` (F32 `[layers]`,
/// 0 = no MLP in that layer) and `mlp.<layer>.{w1,b1,w2,b2}` (F16).
///
/// An adapter with per-layer settings or scored retention has the header kind `kvcapsule-adapter-2` and a
/// `layer_settings` list (one entry per layer: ratio, key ratio, dtypes, policy, reconstructor kind): a reader that
/// predates them refuses the kind instead of building a cache with the wrong budgets or without scores. Every other
/// adapter is written exactly as before, so older files (the shipped ones) and older readers keep working.
public struct CapsuleAdapter {
    public static let kind = "kvcapsule-adapter"
    public static let perLayerKind = "kvcapsule-adapter-2"

    public var fingerprint: String
    public var layers: Int
    public var kvHeads: Int
    public var headDim: Int
    public var ropeBase: Double
    public var settings: CapsuleSettings
    public var recipe: String

    public init(fingerprint: String, layers: Int, kvHeads: Int, headDim: Int, ropeBase: Double, settings: CapsuleSettings,
                recipe: String) {
        self.fingerprint = fingerprint
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.ropeBase = ropeBase
        self.settings = settings
        self.recipe = recipe
    }

    private struct LayerEntry: Codable {
        var ratio: Double
        var keyRatio: Double
        var keyDtype: StoragePrecision
        var valueDtype: StoragePrecision
        var policy: String
        var reconstructor: String
        enum CodingKeys: String, CodingKey {
            case ratio, keyRatio = "key_ratio", keyDtype = "key_dtype", valueDtype = "value_dtype", policy, reconstructor
        }
    }

    private struct Header: Codable {
        var kind = CapsuleAdapter.kind
        var fingerprint: String
        var layers: Int
        var kvHeads: Int
        var headDim: Int
        var ropeBase: Double
        var ratio: Double
        var keyRatio: Double
        var policy: String
        var neighbours: Int
        var keys: String
        /// Absent in adapters written before int8 storage existed: float16.
        var keyDtype: StoragePrecision?
        var valueDtype: StoragePrecision?
        /// Hidden width of the key MLP when `keys` is "linear+mlp".
        var mlpHidden: Int?
        var configurations: [[GridNeighbours.Offset]]
        var recipe: String
        /// Per-layer settings (kind `kvcapsule-adapter-2` only).
        var layerSettings: [LayerEntry]?
        enum CodingKeys: String, CodingKey {
            case kind, fingerprint, layers, kvHeads = "kv_heads", headDim = "head_dim", ropeBase = "rope_base", ratio
            case keyRatio = "key_ratio", policy, neighbours, keys, configurations, recipe
            case keyDtype = "key_dtype", valueDtype = "value_dtype", mlpHidden = "mlp_hidden", layerSettings = "layer_settings"
        }
    }

    /// Writes the compressed `.kvcap` file (atomically).
    public func export(to path: String) throws { try AdapterFile.write(payload: payload(), to: path) }

    /// Writes the uncompressed payload as a plain safetensors file (the training run's checkpoint).
    public func saveCheckpoint(to path: String) throws { try payload().write(to: path) }

    public func payload() throws -> SafetensorsWriter {
        var writer = SafetensorsWriter()
        var configurations: [[GridNeighbours.Offset]] = []
        var keysName: String
        switch settings.keys {
        case .linear(let model):
            keysName = "linear"
            configurations = Set(model.coefficients.flatMap(\.keys)).sorted { $0.lexicographicallyPrecedes($1) }
            let pairs = headDim / 2
            for (c, config) in configurations.enumerated() {
                var values = [Float](repeating: 0, count: layers * kvHeads * config.count * pairs * 2)
                var fitted = [UInt8](repeating: 0, count: layers * kvHeads)
                for slot in 0..<(layers * kvHeads) {
                    guard let coef = model.coefficients[slot][config] else { continue }
                    fitted[slot] = 1
                    for i in 0..<coef.count { values[slot * coef.count + i] = coef[i] }
                }
                try writer.add("linear.\(c).coefficients", floats: values, shape: [layers * kvHeads, config.count, pairs, 2],
                               dtype: .f16)
                try writer.add("linear.\(c).fitted", dtype: .u8, shape: [layers * kvHeads], bytes: Data(fitted))
            }
        case .nearest: keysName = "nearest"
        case .evict: keysName = "evict"
        }
        // "linear+mlp" is a new name on purpose: a reader that predates the MLP refuses it instead of silently
        // rebuilding keys without their residual.
        if let mlp = settings.keyResidual, keysName == "linear" {
            try mlp.add(to: &writer, dtype: .f16)
            keysName = "linear+mlp"
        }
        var header = Header(fingerprint: fingerprint, layers: layers, kvHeads: kvHeads, headDim: headDim, ropeBase: ropeBase,
                            ratio: settings.budget.ratio, keyRatio: settings.budget.keyRatio, policy: settings.policy.rawValue,
                            neighbours: settings.neighbours, keys: keysName, keyDtype: settings.budget.keyPrecision,
                            valueDtype: settings.budget.valuePrecision, mlpHidden: settings.keyResidual?.hidden, configurations: configurations, recipe: recipe)
        if settings.layers != nil || settings.isQuestionAware {
            header.kind = Self.perLayerKind
            header.layerSettings = (0..<layers).map { l in
                let s = settings.layer(l)
                return LayerEntry(ratio: s.budget.ratio, keyRatio: s.budget.keyRatio, keyDtype: s.budget.keyPrecision,
                                  valueDtype: s.budget.valuePrecision, policy: s.policy.rawValue, reconstructor: s.reconstructor.rawValue)
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        writer.metadata["kvcapsule"] = String(decoding: try encoder.encode(header), as: UTF8.self)
        return writer
    }

    /// Loads and checks a `.kvcap` adapter; with `config`/`fingerprint`, refuses one made for another backbone.
    public static func load(path: String, config: LlamaConfig? = nil, fingerprint: String? = nil) throws -> CapsuleAdapter {
        try decode(AdapterFile.read(path: path), path: path, config: config, fingerprint: fingerprint)
    }

    /// Loads a training run's uncompressed checkpoint.
    public static func loadCheckpoint(path: String, config: LlamaConfig? = nil) throws -> CapsuleAdapter {
        try decode(SafetensorsFile(path: path), path: path, config: config, fingerprint: nil)
    }

    private static func decode(_ file: SafetensorsFile, path: String, config: LlamaConfig?, fingerprint: String?) throws -> CapsuleAdapter {
        guard let json = file.metadata["kvcapsule"],
              let h = try? JSONDecoder().decode(Header.self, from: Data(json.utf8)), [kind, perLayerKind].contains(h.kind) else {
            throw KVCError.file(path, "payload metadata 'kvcapsule' is missing or not an adapter header")
        }
        if let config {
            guard h.layers == config.layerCount, h.kvHeads == config.kvHeadCount, h.headDim == config.headDim else {
                throw KVCError.file(path, "adapter is for \(h.layers) layers x \(h.kvHeads) KV heads x head dim \(h.headDim); "
                                    + "this backbone has \(config.layerCount) x \(config.kvHeadCount) x \(config.headDim)")
            }
            guard abs(h.ropeBase - config.ropeBase) <= 1e-6 * config.ropeBase else {
                throw KVCError.file(path, "adapter RoPE base \(h.ropeBase) differs from the backbone's \(config.ropeBase)")
            }
        }
        if let fingerprint, h.fingerprint != fingerprint {
            throw KVCError.file(path, "adapter was trained for backbone \(h.fingerprint), this backbone is \(fingerprint)")
        }
        guard let policy = RetentionPolicy(rawValue: h.policy) else { throw KVCError.file(path, "unknown retention policy '\(h.policy)'") }
        guard (0...1).contains(h.ratio), (0...1).contains(h.keyRatio), (0...1).contains(2 * h.ratio - h.keyRatio),
              (1...16).contains(h.neighbours), h.headDim > 0, h.headDim % 2 == 0, h.layers > 0, h.kvHeads > 0 else {
            throw KVCError.file(path, "adapter header values out of range: \(json)")
        }
        let layerSettings = try h.layerSettings.map { entries -> [CapsuleLayerSettings] in
            guard entries.count == h.layers else {
                throw KVCError.file(path, "'layer_settings' has \(entries.count) entries for \(h.layers) layers")
            }
            return try entries.enumerated().map { l, e in
                guard (0...1).contains(e.ratio), (0...1).contains(e.keyRatio), (0...1).contains(2 * e.ratio - e.keyRatio),
                      let policy = RetentionPolicy(rawValue: e.policy), let kind = KeyReconstructorKind(rawValue: e.reconstructor) else {
                    throw KVCError.file(path, "layer_settings[\(l)] is out of range or names an unknown policy or reconstructor")
                }
                return CapsuleLayerSettings(budget: CapsuleBudget(ratio: e.ratio, keyRatio: e.keyRatio, keyPrecision: e.keyDtype,
                                                                  valuePrecision: e.valueDtype), policy: policy, reconstructor: kind)
            }
        }
        let rope = RotaryEmbedding(headDim: h.headDim, base: h.ropeBase)
        let keys: KeyReconstruction
        switch h.keys {
        case "nearest": keys = .nearest
        case "evict": keys = .evict
        case "linear", "linear+mlp":
            var tables = [[LinearKeyReconstructor.Configuration: [Float]]](repeating: [:], count: h.layers * h.kvHeads)
            let pairs = h.headDim / 2
            for (c, config) in h.configurations.enumerated() {
                let name = "linear.\(c).coefficients"
                let info = try file.info(name)
                guard info.shape == [h.layers * h.kvHeads, config.count, pairs, 2] else {
                    throw KVCError.file(path, "tensor '\(name)' has shape \(info.shape), expected "
                                        + "\([h.layers * h.kvHeads, config.count, pairs, 2])")
                }
                let values = try file.floats(name)
                let fitted = try file.ints("linear.\(c).fitted")
                guard fitted.count == h.layers * h.kvHeads else { throw KVCError.file(path, "tensor 'linear.\(c).fitted' has the wrong length") }
                let per = config.count * pairs * 2
                for slot in 0..<(h.layers * h.kvHeads) where fitted[slot] != 0 {
                    tables[slot][config] = Array(values[(slot * per)..<((slot + 1) * per)])
                }
            }
            keys = .linear(LinearKeyReconstructor(layers: h.layers, kvHeads: h.kvHeads, headDim: h.headDim, rope: rope,
                                                  coefficients: tables))
        default:
            throw KVCError.file(path, "unknown key reconstruction '\(h.keys)'")
        }
        var residual: KeyResidualMLP?
        if h.keys == "linear+mlp" {
            guard let hidden = h.mlpHidden, (1...4096).contains(hidden) else {
                throw KVCError.file(path, "adapter with a key MLP has no valid 'mlp_hidden' in its header")
            }
            residual = try KeyResidualMLP.read(from: file, path: path, layers: h.layers, kvHeads: h.kvHeads, headDim: h.headDim,
                                               slots: h.neighbours, hidden: hidden)
        }
        return CapsuleAdapter(fingerprint: h.fingerprint, layers: h.layers, kvHeads: h.kvHeads, headDim: h.headDim,
                              ropeBase: h.ropeBase,
                              settings: CapsuleSettings(budget: CapsuleBudget(ratio: h.ratio, keyRatio: h.keyRatio,
                                                                              keyPrecision: h.keyDtype ?? .float16,
                                                                              valuePrecision: h.valueDtype ?? .float16), policy: policy,
                                                        neighbours: h.neighbours, keys: keys, keyResidual: residual,
                                                        layers: layerSettings),
                              recipe: h.recipe)
    }
}
