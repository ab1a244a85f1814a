import Foundation
import XCTest
import KVCCollect
import KVCCore
import KVCTensor

/// Faults of real runs of the commands: a diverging or NaN-producing training stops naming the step and saves
/// nothing of it; a disk that fills up mid-write (RLIMIT_FSIZE) fails with an error naming the file and leaves the
/// previous good file intact, for every atomic writer: training checkpoints, cache shards (and manifest), adapters.
final class FaultTests: XCTestCase {
    private func bytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }
    private func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }
    private func temporaries(in dir: String) throws -> [String] {
        try FileManager.default.subpathsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
    }

    // MARK: Numerical faults

    /// Learning rate 1 with clipping off: the loss leaves its starting range; the run stops at that step and the
    /// checkpoint of the last good step is all that is on disk.
    func testDivergingFrontEndRunIsReportedAndNotSaved() throws {
        try ChildProcess.requireAssets()
        let dir = try ChildProcess.temporaryDirectory("diverge")
        let args = try TinyRuns.frontEnd(in: dir, steps: 6, checkpointEvery: 1, alignment: [
            "learning_rate": "1.0", "min_learning_rate": "1.0", "warmup_steps": "0", "clip_norm": "1000000"])
        let outcome = try ChildProcess.run(try ChildProcess.executable("kvc-train"), args)
        XCTAssertNotEqual(outcome.status, 0, "a diverging run ended successfully")
        XCTAssertTrue(outcome.stderr.contains("diverged"), outcome.stderr)
        let named = outcome.stderr.components(separatedBy: " at step ").dropFirst().first?.prefix { $0.isNumber }
        let step = try XCTUnwrap(named.flatMap { Int($0) }, "no step named: \(outcome.stderr)")
        XCTAssertFalse(exists(dir + "/frontend.safetensors"), "the diverged front end was written as the output")
        XCTAssertEqual(TrainingCheckpoint.savedStep(at: dir + "/run/train-state.safetensors"), step - 1,
                       "the checkpoint on disk is not the last good step")
        print("divergence test: stopped at step \(step): \(outcome.stderr.split(separator: "\n").last ?? "")")
    }

    /// An encoder checkpoint with one NaN weight makes the loss NaN at step 1: stopped there, nothing saved.
    func testNaNLossStopsAtItsStepWithNothingSaved() throws {
        try ChildProcess.requireAssets()
        let dir = try ChildProcess.temporaryDirectory("nan")
        let source = try SafetensorsFile(path: TinyRuns.encoder)
        var writer = SafetensorsWriter(metadata: source.metadata)
        for (k, info) in source.tensors.enumerated() {
            var values = try source.floats(info.name)
            if k == 0 { values[3] = .nan }
            try writer.add(info.name, floats: values, shape: info.shape, dtype: info.dtype)
        }
        try writer.write(to: dir + "/encoder-nan.safetensors")
        let args = try TinyRuns.frontEnd(in: dir, encoder: dir + "/encoder-nan.safetensors")
        let outcome = try ChildProcess.run(try ChildProcess.executable("kvc-train"), args)
        XCTAssertNotEqual(outcome.status, 0)
        XCTAssertTrue(outcome.stderr.contains("loss is nan at step 1"), outcome.stderr)
        XCTAssertFalse(exists(dir + "/run/train-state.safetensors"))
        XCTAssertFalse(exists(dir + "/frontend.safetensors"))
    }

    /// A cache shard holding a NaN key (written by another tool, checksummed in the manifest) is refused by the capsule
    /// fit, naming the shard, the sample and where the NaN sits; no adapter is written.
    func testCapsuleFitRefusesNonFiniteCaches() throws {
        try ChildProcess.requireAssets()
        let caches = try ChildProcess.temporaryDirectory("nan-caches")
        let shared = try TinyRuns.sharedCaches()
        for name in try FileManager.default.contentsOfDirectory(atPath: shared) {
            try FileManager.default.copyItem(atPath: shared + "/" + name, toPath: caches + "/" + name)
        }
        let shard = caches + "/" + CacheShard.fileName(index: 1)
        let file = try SafetensorsFile(path: shard)
        let info = try file.info("0.keys")
        var data = try XCTUnwrap(bytes(shard))
        let headerLength = data.prefix(8).withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        let element = 5 * 64 * 64 + 7   // layer 1 (3 heads x 64 tokens x 64 dims per layer), head 2, token 0, dim 7
        let offset = 8 + headerLength + info.begin + 2 * element
        data[offset] = 0x00
        data[offset + 1] = 0x7E   // float16 NaN
        try data.write(to: URL(fileURLWithPath: shard))
        let manifest = try CacheManifest.read(directory: caches)
        try CacheManifest.build(directory: caches, source: manifest.source).write(directory: caches)

        let dir = try ChildProcess.temporaryDirectory("nan-fit")
        let outcome = try ChildProcess.run(try ChildProcess.executable("kvc-train"), try TinyRuns.capsule(in: dir, caches: caches))
        XCTAssertNotEqual(outcome.status, 0)
        for part in [shard, "non-finite", "layer 1, head 2, token 0"] {
            XCTAssertTrue(outcome.stderr.contains(part), "error does not say '\(part)': \(outcome.stderr)")
        }
        XCTAssertFalse(exists(dir + "/run/adapter.safetensors"))
    }

    // MARK: Full disk

    func testFullDiskDuringCheckpointSaveKeepsThePreviousCheckpoint() throws {
        try ChildProcess.requireAssets()
        let dir = try ChildProcess.temporaryDirectory("full-ckpt")
        let exe = try ChildProcess.executable("kvc-train")
        let first = try ChildProcess.run(exe, try TinyRuns.frontEnd(in: dir, steps: 1, checkpointEvery: 1))
        XCTAssertEqual(first.status, 0, first.stderr)
        let state = dir + "/run/train-state.safetensors"
        let before = try XCTUnwrap(bytes(state))
        // One more step, with files limited to a third of the checkpoint's size.
        let outcome = try ChildProcess.run(exe, try TinyRuns.frontEnd(in: dir, steps: 2, checkpointEvery: 1),
                                           fileSizeLimit: (before.count / 3) & ~1023)
        XCTAssertNotEqual(outcome.status, 0, "a write past the size limit succeeded")
        XCTAssertTrue(outcome.stderr.contains(state) && outcome.stderr.contains("File too large")
                      && outcome.stderr.contains("previous file left intact"), outcome.stderr)
        XCTAssertEqual(bytes(state), before, "the previous checkpoint changed")
        XCTAssertEqual(TrainingCheckpoint.savedStep(at: state), 1)
        XCTAssertEqual(try temporaries(in: dir), [])
        // With space again, the run resumes from the intact checkpoint and completes.
        let resumed = try ChildProcess.run(exe, try TinyRuns.frontEnd(in: dir, steps: 2, checkpointEvery: 1))
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(TrainingCheckpoint.savedStep(at: state), 2)
    }

    func testFullDiskDuringShardWriteKeepsShardsAndManifest() throws {
        try ChildProcess.requireAssets()
        let dir = try ChildProcess.temporaryDirectory("full-shard")
        let exe = try ChildProcess.executable("kvc-collect")
        XCTAssertEqual(try ChildProcess.run(exe, TinyRuns.collect(out: dir, limit: 2, perShard: 1)).status, 0)
        let before = try ChildProcess.contents(of: dir)
        XCTAssertEqual(before.count, 3)   // 2 shards + manifest
        let shardSize = try XCTUnwrap(before[CacheShard.fileName(index: 0)]).count
        // A third prompt: its shard cannot be written in full.
        let outcome = try ChildProcess.run(exe, TinyRuns.collect(out: dir, limit: 3, perShard: 1),
                                           fileSizeLimit: (shardSize / 2) & ~1023)
        XCTAssertNotEqual(outcome.status, 0)
        let third = dir + "/" + CacheShard.fileName(index: 2)
        XCTAssertTrue(outcome.stderr.contains(third) && outcome.stderr.contains("File too large"), outcome.stderr)
        XCTAssertEqual(try ChildProcess.contents(of: dir), before, "shards or manifest changed, or a partial shard appeared")
        // With space again, the missing shard is collected and the manifest rebuilt.
        XCTAssertEqual(try ChildProcess.run(exe, TinyRuns.collect(out: dir, limit: 3, perShard: 1)).status, 0)
        XCTAssertEqual(try CacheManifest.read(directory: dir).sampleCount, 3)
    }

    func testFullDiskDuringAdapterExportKeepsThePreviousAdapter() throws {
        try ChildProcess.requireAssets()
        let dir = try ChildProcess.temporaryDirectory("full-export")
        let fit = try ChildProcess.run(try ChildProcess.executable("kvc-train"),
                                       try TinyRuns.capsule(in: dir, caches: try TinyRuns.sharedCaches()))
        XCTAssertEqual(fit.status, 0, fit.stderr)
        let export = try ChildProcess.executable("kvc-export")
        let adapter = dir + "/adapter.kvcap"
        XCTAssertEqual(try ChildProcess.run(export, [dir + "/run", "-o", adapter]).status, 0)
        let before = try XCTUnwrap(bytes(adapter))
        let outcome = try ChildProcess.run(export, [dir + "/run", "-o", adapter], fileSizeLimit: (before.count / 2) & ~1023)
        XCTAssertNotEqual(outcome.status, 0)
        XCTAssertTrue(outcome.stderr.contains(adapter) && outcome.stderr.contains("File too large"), outcome.stderr)
        XCTAssertEqual(bytes(adapter), before, "the previous adapter changed")
        XCTAssertEqual(try temporaries(in: dir), [])
    }
}
