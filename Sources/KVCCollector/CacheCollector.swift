import Dispatch
import Foundation
import KVCBackbone
import KVCCollect
import KVCCore
import KVCVision

/// Which shards this process writes: those whose index `s` has `s % count == index` (`--shard index/count`).
public struct ShardSelection: Equatable, Sendable, CustomStringConvertible {
    public var index: Int
    public var count: Int

    public static let all = ShardSelection(index: 0, count: 1)

    public init(index: Int, count: Int) {
        self.index = index
        self.count = count
    }

    /// Parses `i/n` with `0 <= i < n`.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let i = Int(parts[0]), let n = Int(parts[1]), n > 0, (0..<n).contains(i) else {
            throw KVCError("--shard '\(text)': expected i/n with 0 <= i < n, for example 0/4")
        }
        self.init(index: i, count: n)
    }

    public func contains(_ shard: Int) -> Bool { shard % count == index }
    public var description: String { "\(index)/\(count)" }
}

/// Drives a collection run into a cache directory: checks the directory belongs to this backbone, skips shards
/// that are already complete, collects and writes the missing ones atomically, and rebuilds `manifest.json` from
/// the shard files at the end (which is also how the parts written by `--shard i/n` processes merge).
public final class CacheCollector {
    public let sampleCollector: SampleCollector
    /// Hash of the decoder file and the front-end file (`CacheCollector.fingerprint(modelPath:frontEndPath:)`).
    public let fingerprint: String

    /// Source keys that decide what each shard holds; a directory collected with other values is refused.
    public static let planKeys = ["task", "split", "images_per_prompt", "seed", "samples_per_shard"]

    public init(vlm: VisionLanguageModel, fingerprint: String) {
        sampleCollector = SampleCollector(vlm: vlm)
        self.fingerprint = fingerprint
    }

    /// The fingerprint of a decoder + front end pair: XXH3-128 over the XXH3-128 digests of both files.
    public static func fingerprint(modelPath: String, frontEndPath: String) throws
        -> (fingerprint: String, model: String, frontEnd: String) {
        let model = try Checksum.xxh128(file: modelPath), frontEnd = try Checksum.xxh128(file: frontEndPath)
        return (Checksum.xxh128(Data("model:\(model)\nfront-end:\(frontEnd)\n".utf8)), model, frontEnd)
    }

    public struct Summary: Sendable {
        public var shardsWritten: [Int] = []
        public var shardsAlreadyComplete: [Int] = []
        public var samplesWritten = 0
        public var skipped: [CacheShard.Skip] = []
        /// Tensor bytes (keys, values, queries, positions) of the samples written by this run.
        public var tensorBytesWritten = 0
        /// What the layout formula predicts for those samples: layers x kv_heads x N x head_dim x 2 bytes x 2
        /// (keys and values) + layers x heads x T x head_dim x 2 bytes (queries) + 4 bytes per position.
        public var formulaBytes = 0
        public var visionTokens = 0
        public var textTokens = 0
        public var seconds = 0.0
        public var timing = SampleCollector.Timing()
        public var manifest: CacheManifest?

        public var samplesPerSecond: Double { seconds > 0 ? Double(samplesWritten + skipped.count) / seconds : 0 }
    }

    /// Collects the shards of `plan` selected by `shards` into `directory`.
    /// - Throws: `KVCError` when the directory holds another backbone's caches, a shard it cannot read or one planned
    ///   differently, or a write fails (the files written so far stay complete; the manifest is left as it was).
    public func run(plan: CollectionPlan, directory: String, shards: ShardSelection = .all, source: [String: String],
                    progress: Bool = true) throws -> Summary {
        guard !plan.items.isEmpty else { throw KVCError("nothing to collect: the plan has no items") }
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw KVCError.file(directory, "cannot create the output directory: \(error.localizedDescription)")
        }
        let layout = sampleCollector.layout
        try checkDirectory(directory, layout: layout, source: source)

        var summary = Summary()
        var pending: [Int] = []
        for s in 0..<plan.shardCount where shards.contains(s) {
            let path = directory + "/" + CacheShard.fileName(index: s)
            if FileManager.default.fileExists(atPath: path) {
                try checkComplete(path, expected: plan.items(inShard: s))
                summary.shardsAlreadyComplete.append(s)
            } else {
                pending.append(s)
            }
        }
        let meter = Progress("kvc-collect", total: pending.reduce(0) { $0 + plan.items(inShard: $1).count },
                             unit: "samples", enabled: progress)
        let start = DispatchTime.now()
        for s in pending {
            var samples: [CacheSample] = []
            var skipped: [CacheShard.Skip] = []
            for item in plan.items(inShard: s) {
                do {
                    let sample = try collect(item)
                    summary.tensorBytesWritten += sample.byteCount
                    summary.formulaBytes += Self.formulaBytes(layout: layout, visionTokens: sample.visionCount,
                                                              textTokens: sample.textCount)
                    summary.visionTokens += sample.visionCount
                    summary.textTokens += sample.textCount
                    samples.append(sample)
                } catch let unusable as SampleCollector.Unusable {
                    skipped.append(.init(id: item.id, reason: unusable.reason))
                } catch let error as ImageUnreadable {
                    skipped.append(.init(id: item.id, reason: error.reason))
                }
                meter.advance(status: "shard \(s)")
            }
            try CacheShard.write(samples, skipped: skipped, fingerprint: fingerprint, layout: layout, shardIndex: s,
                                 to: directory + "/" + CacheShard.fileName(index: s))
            summary.shardsWritten.append(s)
            summary.samplesWritten += samples.count
            summary.skipped += skipped
        }
        summary.seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        summary.timing = sampleCollector.timing
        // A `--shard i/n` process with no shard of its own (more processes than shards) leaves nothing to describe.
        let anyShard = (try? FileManager.default.contentsOfDirectory(atPath: directory))?
            .contains { $0.hasPrefix("shard-") && $0.hasSuffix(".safetensors") } ?? false
        if anyShard {
            let manifest = try CacheManifest.build(directory: directory, source: source)
            try manifest.write(directory: directory)
            summary.manifest = manifest
        }
        return summary
    }

    /// Bytes the layout stores for one sample with `visionTokens` image tokens and `textTokens` text queries.
    public static func formulaBytes(layout l: CacheLayout, visionTokens n: Int, textTokens t: Int) -> Int {
        l.layers * l.kvHeads * n * l.headDim * 2 * 2 + l.layers * l.queryHeads * t * l.headDim * 2 + 4 * (n + t)
    }

    // MARK: Steps

    fileprivate struct ImageUnreadable: Error { let reason: String }

    private func collect(_ item: CollectionItem) throws -> CacheSample {
        var images: [Image] = []
        for path in item.imagePaths {
            do { images.append(try Image.load(path: path)) } catch {
                throw ImageUnreadable(reason: "image unreadable: \(error)")
            }
        }
        return try sampleCollector.collect(
            id: item.id, images: images, question: item.question, answer: item.answer,
            info: ["image_ids": item.imageIDs.map(String.init).joined(separator: ","),
                   "target_image": String(item.targetImage), "item": String(item.index)])
    }

    /// Refuses a directory that holds caches of another backbone or layout, an unreadable shard, or a manifest
    /// planned with other settings: mixing them would corrupt the training set silently.
    private func checkDirectory(_ directory: String, layout: CacheLayout, source: [String: String]) throws {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw KVCError.file(directory, "cannot list the output directory: \(error.localizedDescription)")
        }
        for name in names.sorted() where name.hasPrefix("shard-") && name.hasSuffix(".safetensors") {
            let path = directory + "/" + name
            let header: CacheShard.Header
            do { header = try CacheShard.Reader(path: path).header } catch {
                throw KVCError.file(path, "existing shard is unreadable (\(error)); move it away to recollect it")
            }
            guard header.fingerprint == fingerprint else {
                throw KVCError.file(directory, "holds caches of another backbone/front end (\(name) has fingerprint "
                                    + "\(header.fingerprint), this run's is \(fingerprint)); use another --out directory")
            }
            guard header.layout == layout else {
                throw KVCError.file(path, "layout \(header.layout) differs from this backbone's \(layout)")
            }
        }
        let manifestPath = directory + "/" + CacheManifest.fileName
        if FileManager.default.fileExists(atPath: manifestPath) {
            let manifest = try CacheManifest.read(directory: directory)
            guard manifest.fingerprint == fingerprint else {
                throw KVCError.file(manifestPath, "holds caches of another backbone/front end (fingerprint "
                                    + "\(manifest.fingerprint), this run's is \(fingerprint)); use another --out directory")
            }
            for key in Self.planKeys where manifest.source[key] != source[key] {
                throw KVCError.file(manifestPath, "was collected with \(key) = \(manifest.source[key] ?? "unset"), this run "
                                    + "has \(source[key] ?? "unset"); shards would not line up: use another --out directory")
            }
        }
    }

    /// A shard on disk is complete by construction (written atomically); it must also cover exactly the items the
    /// plan puts in it, or it was collected with another --limit or --samples-per-shard.
    private func checkComplete(_ path: String, expected: ArraySlice<CollectionItem>) throws {
        let header = try CacheShard.Reader(path: path).header
        let have = header.samples.map(\.id) + header.skipped.map(\.id)
        guard have.sorted() == expected.map(\.id).sorted() else {
            throw KVCError.file(path, "covers \(have.count) items, the plan puts \(expected.count) (\(expected.first?.id ?? "")"
                                + "...) in it: collected with another --limit or --samples-per-shard? Use another --out "
                                + "directory or move the shard away")
        }
    }
}
