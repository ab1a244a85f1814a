import Foundation
import KVCCore

/// A shard is one safetensors file holding many samples. Per sample `i` it stores the tensors
/// `i.keys`, `i.values` (F16 `[layers, kv_heads, N, head_dim]`), `i.queries` (F16 `[layers, heads, T, head_dim]`),
/// `i.vision_positions`, `i.text_positions` (I32); its `__metadata__` holds the layout version, backbone fingerprint,
/// layout, per-sample ids/grids/info and the entries of its range that were skipped, with reasons.
/// Python reads it with `safetensors.numpy.load_file` (see scripts/reference/read_cache_shard.py).
public enum CacheShard {
    public static let layoutVersion = 1

    public struct Header: Codable, Equatable, Sendable {
        public var layoutVersion: Int
        public var fingerprint: String
        public var layout: CacheLayout
        public var shardIndex: Int
        public var samples: [Entry]
        public var skipped: [Skip]

        public init(fingerprint: String, layout: CacheLayout, shardIndex: Int, samples: [Entry], skipped: [Skip]) {
            self.layoutVersion = CacheShard.layoutVersion
            self.fingerprint = fingerprint
            self.layout = layout
            self.shardIndex = shardIndex
            self.samples = samples
            self.skipped = skipped
        }

        enum CodingKeys: String, CodingKey {
            case layoutVersion = "layout_version", fingerprint, layout, shardIndex = "shard_index", samples, skipped
        }
    }

    public struct Entry: Codable, Equatable, Sendable {
        public var id: String
        public var grids: [ImageGrid]
        public var info: [String: String]
    }

    /// A work item that could not be collected, and why (kept so counts add up and nothing vanishes silently).
    public struct Skip: Codable, Equatable, Sendable {
        public var id: String
        public var reason: String
        public init(id: String, reason: String) {
            self.id = id
            self.reason = reason
        }
    }

    public static func fileName(index: Int) -> String { String(format: "shard-%05d.safetensors", index) }

    /// Writes the shard atomically (temporary name, fsync, rename): an interrupted write never looks complete.
    public static func write(_ samples: [CacheSample], skipped: [Skip], fingerprint: String, layout: CacheLayout,
                             shardIndex: Int, to path: String) throws {
        var writer = SafetensorsWriter()
        for (i, s) in samples.enumerated() {
            try s.validate(against: layout)
            let n = s.visionCount, t = s.textCount
            let kv = [layout.layers, layout.kvHeads, n, layout.headDim]
            try writer.add("\(i).keys", dtype: .f16, shape: kv, bytes: s.keys.withUnsafeBytes { Data($0) })
            try writer.add("\(i).values", dtype: .f16, shape: kv, bytes: s.values.withUnsafeBytes { Data($0) })
            try writer.add("\(i).queries", dtype: .f16, shape: [layout.layers, layout.queryHeads, t, layout.headDim],
                           bytes: s.queries.withUnsafeBytes { Data($0) })
            try writer.add("\(i).vision_positions", int32s: s.visionPositions, shape: [n])
            try writer.add("\(i).text_positions", int32s: s.textPositions, shape: [t])
        }
        let header = Header(fingerprint: fingerprint, layout: layout, shardIndex: shardIndex,
                            samples: samples.map { Entry(id: $0.id, grids: $0.grids, info: $0.info) }, skipped: skipped)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        writer.metadata["kvc"] = String(decoding: try encoder.encode(header), as: UTF8.self)
        try writer.write(to: path)
    }

    /// Reads a shard lazily (memory-mapped); samples are decoded on demand.
    public final class Reader {
        public let path: String
        public let header: Header
        private let file: SafetensorsFile

        public init(path: String) throws {
            self.path = path
            file = try SafetensorsFile(path: path)
            guard let json = file.metadata["kvc"] else {
                throw KVCError.file(path, "not a KV cache shard: __metadata__ has no 'kvc' entry")
            }
            do {
                header = try JSONDecoder().decode(Header.self, from: Data(json.utf8))
            } catch {
                throw KVCError.file(path, "__metadata__.kvc is not a valid shard header: \(error)")
            }
            guard header.layoutVersion == CacheShard.layoutVersion else {
                throw KVCError.file(path, "layout_version \(header.layoutVersion), this build reads \(CacheShard.layoutVersion)")
            }
        }

        public var count: Int { header.samples.count }

        /// Bytes of all tensors in the shard (the header excluded).
        public var tensorBytes: Int { file.tensors.reduce(0) { $0 + $1.end - $1.begin } }

        public func sample(_ i: Int) throws -> CacheSample {
            guard i >= 0 && i < count else { throw KVCError.file(path, "sample index \(i) out of range 0..<\(count)") }
            let entry = header.samples[i]
            let l = header.layout
            let vision = try file.ints("\(i).vision_positions").map { Int32(truncatingIfNeeded: $0) }
            let text = try file.ints("\(i).text_positions").map { Int32(truncatingIfNeeded: $0) }
            let sample = CacheSample(
                id: entry.id, grids: entry.grids, visionPositions: vision, textPositions: text,
                keys: try halfBits("\(i).keys", shape: [l.layers, l.kvHeads, vision.count, l.headDim]),
                values: try halfBits("\(i).values", shape: [l.layers, l.kvHeads, vision.count, l.headDim]),
                queries: try halfBits("\(i).queries", shape: [l.layers, l.queryHeads, text.count, l.headDim]),
                info: entry.info)
            do { try sample.validate(against: l) } catch { throw KVCError.file(path, "\(error)") }
            return sample
        }

        private func halfBits(_ name: String, shape: [Int]) throws -> [UInt16] {
            let info = try file.info(name)
            guard info.dtype == .f16, info.shape == shape else {
                throw KVCError.file(path, "tensor '\(name)' is \(info.dtype.rawValue) \(info.shape), expected F16 \(shape)")
            }
            return try file.withRawBytes(name) { raw in
                [UInt16](unsafeUninitializedCapacity: info.elementCount) { buf, n in
                    if raw.count > 0 { _ = memcpy(buf.baseAddress!, raw.baseAddress!, raw.count) }
                    n = info.elementCount
                }
            }
        }
    }
}
