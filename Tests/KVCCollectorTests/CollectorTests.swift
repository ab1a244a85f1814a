import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCollector
import KVCVision

/// Collection through the real frozen SmolLM2 decoder on real easy-VQA images (a few prompts each, to stay fast).
final class CollectorTests: XCTestCase {
    private func collect(_ plan: CollectionPlan, into dir: String, shards: ShardSelection = .all,
                         fingerprint: String = "fp-test") throws -> CacheCollector.Summary {
        try CacheCollector(vlm: TestSupport.vlm(), fingerprint: fingerprint)
            .run(plan: plan, directory: dir, shards: shards, source: TestSupport.source(plan), progress: false)
    }

    private func samples(in dir: String) throws -> [CacheSample] {
        var all: [CacheSample] = []
        try CacheStore(directory: dir, verifyChecksums: true).forEachSample { all.append($0) }
        return all
    }

    /// The keys and values stored are, bit for bit, what the float16 plain cache holds for the image tokens when the
    /// VLM answers the same question; the queries are the rows the decoder computed for the text after the image.
    func testStoredKeysAreTheKeysGenerationAttendsTo() throws {
        let vlm = try TestSupport.vlm()
        let c = vlm.backbone.model.config
        let plan = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 1, samplesPerShard: 1)
        let dir = try TestSupport.temporaryDirectory()
        _ = try collect(plan, into: dir)
        let sample = try XCTUnwrap(try samples(in: dir).first)
        let item = plan.items[0]
        let images = try item.imagePaths.map { try Image.load(path: $0) }

        // Generation: the whole prompt in one forward call, then greedy decoding, over a plain float16 cache.
        let cache = vlm.backbone.model.makeCache()
        _ = try vlm.answer(images: images, question: item.question, cache: cache)
        let n = sample.visionCount, d = c.headDim
        XCTAssertEqual(n, vlm.frontEnd.tokensPerImage)
        XCTAssertEqual(sample.grids, [ImageGrid(start: 0, rows: vlm.frontEnd.gridSide, cols: vlm.frontEnd.gridSide)])
        var mismatches = 0
        for layer in 0..<c.layerCount {
            cache.withLayer(layer) { view in
                guard case .float16(let k, let v) = view.storage else { return XCTFail("plain cache is not float16") }
                let kBits = UnsafeRawPointer(k).assumingMemoryBound(to: UInt16.self)
                let vBits = UnsafeRawPointer(v).assumingMemoryBound(to: UInt16.self)
                for h in 0..<c.kvHeadCount {
                    for (j, position) in sample.visionPositions.enumerated() {
                        for e in 0..<d {
                            let stored = ((layer * c.kvHeadCount + h) * n + j) * d + e
                            let live = h * view.headStride + Int(position) * d + e
                            if sample.keys[stored] != kBits[live] || sample.values[stored] != vBits[live] { mismatches += 1 }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "stored K/V differ from the generation cache in \(mismatches) elements")

        // Reference queries: the calls generation makes (prompt, then the answer token on its own), every row
        // captured without any layout cleverness.
        let prefix = vlm.prefix(imageEmbeddings: vlm.frontEnd.embed(images))
        let suffix = vlm.suffix(question: item.question)
        let answerToken = try XCTUnwrap(Int(sample.info["answer_token"] ?? ""))
        XCTAssertEqual(answerToken, vlm.prompt.answer(item.answer, tokenizer: vlm.backbone.tokenizer).first)
        var rows: [Int: [Int: [Float]]] = [:]   // layer -> position -> [heads * d]
        let observe: LlamaModel.QueryObserver = { layer, q, count, first in
            for i in 0..<count { rows[layer, default: [:]][first + i] = Array(UnsafeBufferPointer(start: q + i * c.queryDim, count: c.queryDim)) }
        }
        let reference = vlm.backbone.model.makeCache()
        _ = try vlm.backbone.model.forward(prefix.pieces + suffix, cache: reference, observeQueries: observe)
        _ = try vlm.backbone.model.forward(embeddings: try vlm.backbone.model.embed(tokens: [answerToken]), cache: reference,
                                           observeQueries: observe)
        let lastImageEnd = Int(sample.visionPositions.last!) + 1
        XCTAssertEqual(sample.textPositions.map(Int.init), Array(lastImageEnd..<prefix.length + suffix.positionCount + 1))
        let t = sample.textCount
        let queries = HalfConversion.halfToFloat(sample.queries)
        var differing = 0
        for layer in 0..<c.layerCount {
            for (ti, position) in sample.textPositions.enumerated() {
                let ref = try XCTUnwrap(rows[layer]?[Int(position)])
                for h in 0..<c.headCount {
                    for e in 0..<d {
                        let stored = queries[((layer * c.headCount + h) * t + ti) * d + e]
                        if stored != HalfConversion.halfToFloat(HalfConversion.floatToHalf([ref[h * d + e]]))[0] { differing += 1 }
                    }
                }
            }
        }
        XCTAssertEqual(differing, 0, "stored queries differ from the decoder's (rounded to float16) in \(differing) elements")
    }

    /// The shard as plain numpy (or Python safetensors) reads it: shapes, sums and values equal the Swift side's.
    func testShardReadByNumpyMatchesSwift() throws {
        let plan = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 2, samplesPerShard: 2)
        let dir = try TestSupport.temporaryDirectory()
        _ = try collect(plan, into: dir)
        let swift = try samples(in: dir)
        XCTAssertEqual(swift.count, 2)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../scripts/reference/read_cache_shard.py").standardized.path
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = ["python3", script, dir + "/" + CacheShard.fileName(index: 0)]
        let pipe = Pipe()
        proc.standardOutput = pipe
        proc.standardError = FileHandle.nullDevice
        do { try proc.run() } catch { throw XCTSkip("python3 not available") }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        guard proc.terminationStatus == 0 else { throw XCTSkip("python3 with numpy not available") }
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: output) as? [String: Any])
        let layout = try XCTUnwrap(json["layout"] as? [String: Int])
        XCTAssertEqual(layout, ["layers": 30, "kv_heads": 3, "query_heads": 9, "head_dim": 64])
        let py = try XCTUnwrap(json["samples"] as? [[String: Any]])
        XCTAssertEqual(py.count, 2)
        for (s, p) in zip(swift, py) {
            XCTAssertEqual(p["id"] as? String, s.id)
            XCTAssertEqual(p["keys_shape"] as? [Int], [30, 3, s.visionCount, 64])
            XCTAssertEqual(p["values_shape"] as? [Int], [30, 3, s.visionCount, 64])
            XCTAssertEqual(p["queries_shape"] as? [Int], [30, 9, s.textCount, 64])
            func sum(_ bits: [UInt16]) -> Double { HalfConversion.halfToFloat(bits).reduce(0.0) { $0 + Double($1) } }
            XCTAssertEqual(try XCTUnwrap(p["keys_sum"] as? Double), sum(s.keys), accuracy: 1e-6 * max(1, abs(sum(s.keys))))
            XCTAssertEqual(try XCTUnwrap(p["values_sum"] as? Double), sum(s.values), accuracy: 1e-6 * max(1, abs(sum(s.values))))
            XCTAssertEqual(try XCTUnwrap(p["queries_sum"] as? Double), sum(s.queries), accuracy: 1e-6 * max(1, abs(sum(s.queries))))
            XCTAssertEqual(Float(try XCTUnwrap(p["key_last"] as? Double)), HalfConversion.halfToFloat([s.keys.last!])[0])
            XCTAssertEqual(Float(try XCTUnwrap(p["value_first"] as? Double)), HalfConversion.halfToFloat([s.values[0]])[0])
            XCTAssertEqual(p["vision_positions"] as? [Int], s.visionPositions.map(Int.init))
            XCTAssertEqual(p["text_positions"] as? [Int], s.textPositions.map(Int.init))
        }
    }

    /// Split across two "machines", merged by the manifest rebuild; a rerun writes nothing; a directory with a
    /// missing shard (and an interrupted write's temporary file) completes to the same bytes.
    func testShardedResumableAndDeterministic() throws {
        let plan = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 3, samplesPerShard: 1)
        let dir = try TestSupport.temporaryDirectory()
        let first = try collect(plan, into: dir, shards: ShardSelection(index: 0, count: 2))
        XCTAssertEqual(first.shardsWritten, [0, 2])
        XCTAssertEqual(first.manifest?.sampleCount, 2)
        let second = try collect(plan, into: dir, shards: ShardSelection(index: 1, count: 2))
        XCTAssertEqual(second.shardsWritten, [1])
        XCTAssertEqual(second.shardsAlreadyComplete, [])
        let merged = try XCTUnwrap(second.manifest)
        XCTAssertEqual(merged.sampleCount, 3)
        XCTAssertEqual(merged.shards.map(\.index), [0, 1, 2])
        XCTAssertEqual(try samples(in: dir).map(\.id), plan.items.map(\.id))

        func modificationDates() throws -> [Date] {
            try (0..<3).map { try XCTUnwrap(FileManager.default.attributesOfItem(atPath: dir + "/" + CacheShard.fileName(index: $0))[.modificationDate] as? Date) }
        }
        let before = try modificationDates()
        let rerun = try collect(plan, into: dir)
        XCTAssertEqual(rerun.shardsWritten, [])
        XCTAssertEqual(rerun.shardsAlreadyComplete, [0, 1, 2])
        XCTAssertEqual(rerun.samplesWritten, 0)
        XCTAssertEqual(try modificationDates(), before)
        XCTAssertEqual(rerun.manifest, merged)

        // An interrupted run: shard 1 missing, a temporary file of the write that never finished.
        try FileManager.default.removeItem(atPath: dir + "/" + CacheShard.fileName(index: 1))
        try Data(repeating: 7, count: 100).write(to: URL(fileURLWithPath: dir + "/.shard-00001.safetensors.tmp-99999"))
        let resumed = try collect(plan, into: dir)
        XCTAssertEqual(resumed.shardsWritten, [1])
        XCTAssertEqual(resumed.manifest?.shards, merged.shards, "recollected shard differs: collection is not deterministic")

        // A plan that puts other items in the existing shards is refused, naming the shard.
        let other = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 4, samplesPerShard: 2)
        XCTAssertThrowsError(try CacheCollector(vlm: TestSupport.vlm(), fingerprint: "fp-test")
            .run(plan: other, directory: dir, source: TestSupport.source(plan), progress: false)) {
            XCTAssertTrue("\($0)".contains("shard-00000") && "\($0)".contains("the plan puts"), "\($0)")
        }
    }

    func testForeignFingerprintIsRefusedAndNothingChanges() throws {
        let plan = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 1, samplesPerShard: 1)
        let dir = try TestSupport.temporaryDirectory()
        _ = try collect(plan, into: dir, fingerprint: "fp-A")
        let manifestBefore = try Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json"))
        let bigger = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 2, samplesPerShard: 1)
        XCTAssertThrowsError(try collect(bigger, into: dir, fingerprint: "fp-B")) {
            XCTAssertTrue("\($0)".contains("another backbone") && "\($0)".contains("fp-A"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/" + CacheShard.fileName(index: 1)))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json")), manifestBefore)
        // The manifest alone also marks the directory.
        try FileManager.default.removeItem(atPath: dir + "/" + CacheShard.fileName(index: 0))
        XCTAssertThrowsError(try collect(bigger, into: dir, fingerprint: "fp-B")) {
            XCTAssertTrue("\($0)".contains("manifest.json") && "\($0)".contains("another backbone"), "\($0)")
        }
    }

    /// An unreadable image is a recorded skip (in the shard header and the manifest), not an error.
    func testUnreadableImageIsARecordedSkip() throws {
        let good = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, limit: 1, samplesPerShard: 2)
        let dir = try TestSupport.temporaryDirectory()
        let broken = dir + "/broken.png"
        try Data("not a png".utf8).write(to: URL(fileURLWithPath: broken))
        var bad = good.items[0]
        bad.index = 1
        bad.id = "train/broken"
        bad.imagePaths = [broken]
        // One item per shard: the second shard holds nothing but the skip.
        let plan = CollectionPlan(items: [good.items[0], bad], samplesPerShard: 1)
        let out = dir + "/out"
        let summary = try collect(plan, into: out)
        XCTAssertEqual(summary.samplesWritten, 1)
        XCTAssertEqual(summary.skipped.map(\.id), ["train/broken"])
        XCTAssertTrue(summary.skipped[0].reason.contains("image unreadable") && summary.skipped[0].reason.contains("broken.png"),
                      summary.skipped[0].reason)
        XCTAssertEqual(summary.manifest?.skipped, summary.skipped)
        XCTAssertEqual(summary.manifest?.shards.map(\.samples), [1, 0])
        XCTAssertEqual(summary.manifest?.sampleCount, 1)
        // The skip is recorded in a complete shard, so a rerun does not try the broken image again.
        XCTAssertEqual(try collect(plan, into: out).shardsWritten, [])
    }

    /// Two images per prompt: both grids stored, the span skips the text between them, the question names the image.
    func testMultiImagePrompt() throws {
        let vlm = try TestSupport.vlm()
        let plan = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, imagesPerPrompt: 2, seed: 3, limit: 1,
                                              samplesPerShard: 1)
        let dir = try TestSupport.temporaryDirectory()
        _ = try CacheCollector(vlm: vlm, fingerprint: "fp").run(plan: plan, directory: dir,
                                                               source: TestSupport.source(plan, imagesPerPrompt: 2, seed: 3),
                                                               progress: false)
        let s = try XCTUnwrap(try samples(in: dir).first)
        let per = vlm.frontEnd.tokensPerImage
        XCTAssertEqual(s.grids.map(\.start), [0, per])
        XCTAssertEqual(s.visionCount, 2 * per)
        XCTAssertEqual(s.keys.count, 30 * 3 * 2 * per * 64)
        let gap = Int(s.visionPositions[per]) - Int(s.visionPositions[per - 1])
        XCTAssertEqual(gap, 1 + vlm.prompt.imageClose.count + vlm.prompt.imageOpen.count, "text between the images")
        XCTAssertEqual(s.info["image_ids"], plan.items[0].imageIDs.map(String.init).joined(separator: ","))
        XCTAssertTrue(s.info["question"]!.hasPrefix("In image \(plan.items[0].targetImage + 1), "), s.info["question"]!)
    }
}

/// A shard written by another framework through scripts/reference/write_cache_shard.py is read by the Swift side.
final class ForeignShardTests: XCTestCase {
    func testShardWrittenByPythonIsReadBySwift() throws {
        let dir = try TestSupport.temporaryDirectory()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../scripts/reference/write_cache_shard.py").standardized.path
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = ["python3", script, dir + "/" + CacheShard.fileName(index: 0), "--demo", "7"]
        let pipe = Pipe()
        proc.standardOutput = pipe
        proc.standardError = FileHandle.nullDevice
        do { try proc.run() } catch { throw XCTSkip("python3 not available") }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        guard proc.terminationStatus == 0 else { throw XCTSkip("python3 with numpy not available") }
        let sums = try XCTUnwrap(try JSONSerialization.jsonObject(with: output) as? [[String: Double]])

        let manifest = try CacheManifest.build(directory: dir, source: ["task": "python-demo"])
        try manifest.write(directory: dir)
        XCTAssertEqual(manifest.fingerprint, "python-demo")
        XCTAssertEqual(manifest.layout, CacheLayout(layers: 2, kvHeads: 3, queryHeads: 9, headDim: 4))
        XCTAssertEqual(manifest.skipped, [.init(id: "demo/9", reason: "left out on purpose")])
        var read: [CacheSample] = []
        try CacheStore(directory: dir, verifyChecksums: true).forEachSample { read.append($0) }
        XCTAssertEqual(read.map(\.id), ["demo/0", "demo/1"])
        XCTAssertEqual(read.map(\.visionCount), [4, 6])
        XCTAssertEqual(read[1].textPositions, [13])
        XCTAssertEqual(read[0].info, ["source": "python"])
        func sum(_ bits: [UInt16]) -> Double { HalfConversion.halfToFloat(bits).reduce(0.0) { $0 + Double($1) } }
        for (s, p) in zip(read, sums) {
            XCTAssertEqual(sum(s.keys), try XCTUnwrap(p["keys"]), accuracy: 1e-9)
            XCTAssertEqual(sum(s.values), try XCTUnwrap(p["values"]), accuracy: 1e-9)
            XCTAssertEqual(sum(s.queries), try XCTUnwrap(p["queries"]), accuracy: 1e-9)
        }
    }
}
