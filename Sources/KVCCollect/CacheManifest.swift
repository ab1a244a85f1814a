import Foundation
import KVCCore

/// `manifest.json` of a cache directory. It is derived from the shard files present (each shard is self-describing and
/// written atomically), so shards made by separate `--shard i/n` processes merge by rebuilding it, and a manifest can
/// never claim a shard that is not complete on disk.
public struct CacheManifest: Codable, Equatable, Sendable {
    public struct Shard: Codable, Equatable, Sendable {
        public var file: String
        public var index: Int
        public var samples: Int
        public var bytes: Int
        public var checksum: String
    }

    public var layoutVersion: Int
    public var fingerprint: String
    public var layout: CacheLayout
    public var source: [String: String]
    public var shards: [Shard]
    public var sampleCount: Int
    public var skipped: [CacheShard.Skip]
    /// Mean stored bytes per sample (keys, values, queries, positions), headers excluded.
    public var bytesPerSample: Double

    enum CodingKeys: String, CodingKey {
        case layoutVersion = "layout_version", fingerprint, layout, source, shards, sampleCount = "sample_count",
             skipped, bytesPerSample = "bytes_per_sample"
    }

    public static let fileName = "manifest.json"

    /// Scans `directory` for complete shards and describes them. Shards of another backbone or layout are an error.
    public static func build(directory: String, source: [String: String]) throws -> CacheManifest {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasPrefix("shard-") && $0.hasSuffix(".safetensors") }.sorted()
        guard !files.isEmpty else { throw KVCError.file(directory, "no shard files (shard-*.safetensors)") }
        var shards: [Shard] = []
        var skipped: [CacheShard.Skip] = []
        var first: CacheShard.Header?
        var samples = 0, tensorBytes = 0
        for name in files {
            let path = directory + "/" + name
            let reader = try CacheShard.Reader(path: path)
            let h = reader.header
            if let f = first {
                guard h.fingerprint == f.fingerprint, h.layout == f.layout else {
                    throw KVCError.file(path, "backbone fingerprint/layout differs from \(files[0]): caches of two backbones "
                                        + "cannot share a directory")
                }
            } else {
                first = h
            }
            let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
            shards.append(Shard(file: name, index: h.shardIndex, samples: reader.count, bytes: size,
                                checksum: try Checksum.xxh128(file: path)))
            skipped += h.skipped
            samples += reader.count
            tensorBytes += reader.tensorBytes
        }
        return CacheManifest(layoutVersion: CacheShard.layoutVersion, fingerprint: first!.fingerprint, layout: first!.layout,
                             source: source, shards: shards, sampleCount: samples, skipped: skipped,
                             bytesPerSample: samples > 0 ? Double(tensorBytes) / Double(samples) : 0)
    }

    public func write(directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(self), to: directory + "/" + Self.fileName)
    }

    public static func read(directory: String) throws -> CacheManifest {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KVCError.file(path, "missing: run kvc-collect into this directory first")
        }
        do {
            return try JSONDecoder().decode(CacheManifest.self, from: data)
        } catch {
            throw KVCError.file(path, "not a valid cache manifest: \(error)")
        }
    }
}

/// The reader the trainer uses: streams samples shard by shard without loading the whole directory.
public final class CacheStore {
    public let directory: String
    public let manifest: CacheManifest

    public init(directory: String, verifyChecksums: Bool = false) throws {
        self.directory = directory
        manifest = try CacheManifest.read(directory: directory)
        guard manifest.layoutVersion == CacheShard.layoutVersion else {
            throw KVCError.file(directory + "/" + CacheManifest.fileName,
                                "layout_version \(manifest.layoutVersion), this build reads \(CacheShard.layoutVersion)")
        }
        // The manifest is read as untrusted input: its own fields must agree before anyone sizes work by them.
        let manifestPath = directory + "/" + CacheManifest.fileName
        for s in manifest.shards where s.file.contains("/") || !s.file.hasPrefix("shard-") || s.samples < 0 {
            throw KVCError.file(manifestPath, "shard entry \(s.file) (\(s.samples) samples) is not a shard-*.safetensors file "
                                + "of this directory with a sample count")
        }
        guard manifest.sampleCount == manifest.shards.reduce(0, { $0 + $1.samples }) else {
            throw KVCError.file(manifestPath, "sample_count \(manifest.sampleCount) differs from the sum over its shards, "
                                + "\(manifest.shards.reduce(0) { $0 + $1.samples })")
        }
        if verifyChecksums {
            for s in manifest.shards {
                let path = directory + "/" + s.file
                let sum = try Checksum.xxh128(file: path)
                guard sum == s.checksum else {
                    throw KVCError.file(path, "checksum \(sum) differs from the manifest's \(s.checksum): the shard changed or is corrupt")
                }
            }
        }
    }

    public var count: Int { manifest.sampleCount }

    /// Calls `body` with every sample in shard order; only one shard is mapped at a time.
    public func forEachSample(_ body: (CacheSample) throws -> Void) throws {
        for s in manifest.shards {
            let reader = try CacheShard.Reader(path: directory + "/" + s.file)
            guard reader.header.fingerprint == manifest.fingerprint else {
                throw KVCError.file(reader.path, "fingerprint differs from the manifest's")
            }
            // Readers index samples with the manifest's layout, so a shard must match it (and its sample count).
            guard reader.header.layout == manifest.layout, reader.count == s.samples else {
                throw KVCError.file(reader.path, "holds \(reader.count) samples of layout \(reader.header.layout); the "
                                    + "manifest says \(s.samples) of \(manifest.layout): rebuild it (rerun kvc-collect)")
            }
            for i in 0..<reader.count { try body(try reader.sample(i)) }
        }
    }
}
