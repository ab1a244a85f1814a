import Foundation
import KVCCore

/// Everything a training run needs to continue bit-identically after an interruption: the parameters, the AdamW
/// moments and step counts, the number of steps done, named random streams and free-form metadata.
///
/// It is one safetensors file written atomically (temporary name, fsync, rename), so parameters and optimizer state can
/// never come from different steps, and a process killed mid-write leaves the previous checkpoint in place. Loading
/// checks the whole file (format version, content checksum, every tensor present with its shape, finite values)
/// before it modifies any tensor. Saving refuses non-finite parameters: a diverged run is never checkpointed.
///
/// Layout: tensors `param/<name>`, `adamw/<group>/m/<name>`, `adamw/<group>/v/<name>` (F32, exact), and
/// `__metadata__["kvc_training_checkpoint"]` = JSON `Header`.
public struct TrainingCheckpoint {
    public static let formatVersion = 1
    static let metadataKey = "kvc_training_checkpoint"

    /// Steps completed; the resumed run starts at this step.
    public var step: Int
    public var parameters: [(name: String, tensor: Tensor)]
    public var optimizers: [String: AdamW]
    public var random: [String: SeededRandom]
    public var metadata: [String: String]

    public init(step: Int, parameters: [(name: String, tensor: Tensor)], optimizers: [String: AdamW] = [:],
                random: [String: SeededRandom] = [:], metadata: [String: String] = [:]) {
        self.step = step
        self.parameters = parameters
        self.optimizers = optimizers
        self.random = random
        self.metadata = metadata
    }

    struct Header: Codable {
        var formatVersion: Int
        var step: Int
        /// Group name -> AdamW step count (bias correction depends on it).
        var optimizerSteps: [String: Int]
        /// Stream name -> `SeededRandom.checkpointState`, as decimal strings (JSON numbers lose 64-bit precision).
        var random: [String: [String]]
        var metadata: [String: String]
        /// XXH3-128 over the per-tensor digests, in tensor-name order.
        var contentChecksum: String

        enum CodingKeys: String, CodingKey {
            case formatVersion = "format_version", step, optimizerSteps = "optimizer_steps", random, metadata
            case contentChecksum = "content_xxh128"
        }
    }

    // MARK: Saving

    public func save(to path: String) throws {
        try NumericalFault.checkValues(parameters, step: step, context: "checkpoint \(path)")
        var tensors: [(name: String, shape: [Int], pointer: UnsafePointer<Float>, count: Int)] = []
        for (name, t) in parameters { tensors.append(("param/" + name, t.shape, UnsafePointer(t.data), t.count)) }
        for (group, optimizer) in optimizers.sorted(by: { $0.key < $1.key }) {
            let names = try Self.optimizerNames(optimizer, parameters: parameters, group: group)
            for (k, p) in optimizer.parameters.enumerated() {
                tensors.append(("adamw/\(group)/m/\(names[k])", p.shape, UnsafePointer(optimizer.m[k].pointer), p.count))
                tensors.append(("adamw/\(group)/v/\(names[k])", p.shape, UnsafePointer(optimizer.v[k].pointer), p.count))
            }
        }
        var writer = SafetensorsWriter()
        var digests: [String: String] = [:]
        for t in tensors {
            let bytes = Data(bytes: t.pointer, count: t.count * MemoryLayout<Float>.size)
            digests[t.name] = Checksum.xxh128(bytes)
            try writer.add(t.name, dtype: .f32, shape: t.shape, bytes: bytes)
        }
        let header = Header(formatVersion: Self.formatVersion, step: step,
                            optimizerSteps: optimizers.mapValues(\.stepCount),
                            random: random.mapValues { $0.checkpointState.map(String.init) }, metadata: metadata,
                            contentChecksum: Self.combinedChecksum(digests))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        writer.metadata[Self.metadataKey] = String(decoding: try encoder.encode(header), as: UTF8.self)
        try writer.write(to: path)
    }

    // MARK: Loading

    /// Validates the checkpoint at `path` against `parameters` and `optimizers` (same names, shapes and groups as
    /// when it was saved), then copies the saved values into them. Throws, modifying nothing, if anything differs.
    public static func restore(from path: String, parameters: [(name: String, tensor: Tensor)],
                               optimizers: [String: AdamW] = [:]) throws -> TrainingCheckpoint {
        let file = try SafetensorsFile(path: path)
        guard let json = file.metadata[metadataKey] else {
            throw KVCError.file(path, "not a training checkpoint: __metadata__ has no '\(metadataKey)' entry")
        }
        let header: Header
        do { header = try JSONDecoder().decode(Header.self, from: Data(json.utf8)) } catch {
            throw KVCError.file(path, "__metadata__.\(metadataKey) is not a valid checkpoint header: \(error)")
        }
        guard header.formatVersion == formatVersion else {
            throw KVCError.file(path, "format_version \(header.formatVersion), this build reads \(formatVersion)")
        }
        guard header.step >= 0 else { throw KVCError.file(path, "step \(header.step) is negative") }

        // Every destination buffer with the tensor name that must fill it.
        var targets: [(name: String, shape: [Int], pointer: UnsafeMutablePointer<Float>, count: Int)] = []
        for (name, t) in parameters { targets.append(("param/" + name, t.shape, t.data, t.count)) }
        let savedGroups = Set(header.optimizerSteps.keys), wantedGroups = Set(optimizers.keys)
        guard savedGroups == wantedGroups else {
            throw KVCError.file(path, "optimizer groups \(savedGroups.sorted()), this run has \(wantedGroups.sorted())")
        }
        for (group, optimizer) in optimizers {
            let names = try optimizerNames(optimizer, parameters: parameters, group: group)
            for (k, p) in optimizer.parameters.enumerated() {
                targets.append(("adamw/\(group)/m/\(names[k])", p.shape, optimizer.m[k].pointer, p.count))
                targets.append(("adamw/\(group)/v/\(names[k])", p.shape, optimizer.v[k].pointer, p.count))
            }
        }
        let expected = Set(targets.map(\.name))
        let unexpected = file.names.filter { !expected.contains($0) }.sorted()
        guard unexpected.isEmpty else {
            throw KVCError.file(path, "tensors \(unexpected.prefix(5)) are not part of this run (a checkpoint of another model?)")
        }
        var digests: [String: String] = [:]
        for t in targets {
            guard file.contains(t.name) else { throw KVCError.file(path, "missing tensor '\(t.name)' (shape \(t.shape))") }
            let info = try file.info(t.name)
            guard info.dtype == .f32, info.shape == t.shape else {
                throw KVCError.file(path, "tensor '\(t.name)' is \(info.dtype.rawValue) \(info.shape), this run expects F32 \(t.shape)")
            }
            digests[t.name] = try file.withRawBytes(t.name) { Checksum.xxh128($0) }
        }
        let checksum = combinedChecksum(digests)
        guard checksum == header.contentChecksum else {
            throw KVCError.file(path, "content checksum \(checksum) differs from the header's \(header.contentChecksum): "
                                + "the file is corrupt")
        }
        var random: [String: SeededRandom] = [:]
        for (name, words) in header.random {
            let values = words.compactMap(UInt64.init)
            guard values.count == words.count, let r = SeededRandom(checkpointState: values) else {
                throw KVCError.file(path, "random stream '\(name)' has an invalid state \(words)")
            }
            random[name] = r
        }
        for (group, steps) in header.optimizerSteps where steps < 0 {
            throw KVCError.file(path, "optimizer '\(group)' has a negative step count \(steps)")
        }
        // Checked: now copy.
        for t in targets {
            try file.withRawBytes(t.name) { raw in
                _ = memcpy(t.pointer, raw.baseAddress!, t.count * MemoryLayout<Float>.size)
            }
        }
        for (group, optimizer) in optimizers { optimizer.stepCount = header.optimizerSteps[group]! }
        try NumericalFault.checkValues(parameters, step: header.step, context: "checkpoint \(path)")
        return TrainingCheckpoint(step: header.step, parameters: parameters, optimizers: optimizers, random: random,
                                  metadata: header.metadata)
    }

    /// The step count saved in the checkpoint at `path`, without loading its tensors; nil if there is none.
    public static func savedStep(at path: String) -> Int? {
        guard let file = try? SafetensorsFile(path: path), let json = file.metadata[metadataKey],
              let header = try? JSONDecoder().decode(Header.self, from: Data(json.utf8)) else { return nil }
        return header.step
    }

    // MARK: Helpers

    /// Names the optimizer's parameters after `parameters` (by identity), so moments follow their tensor by name.
    private static func optimizerNames(_ optimizer: AdamW, parameters: [(name: String, tensor: Tensor)],
                                       group: String) throws -> [String] {
        var byIdentity: [ObjectIdentifier: String] = [:]
        for (name, t) in parameters { byIdentity[ObjectIdentifier(t)] = name }
        return try optimizer.parameters.map { p in
            guard let name = byIdentity[ObjectIdentifier(p)] else {
                throw KVCError("training checkpoint: optimizer '\(group)' updates a tensor of shape \(p.shape) that is not "
                               + "among the checkpoint's parameters")
            }
            return name
        }
    }

    private static func combinedChecksum(_ digests: [String: String]) -> String {
        Checksum.xxh128(Data(digests.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)\n" }.joined().utf8))
    }
}
