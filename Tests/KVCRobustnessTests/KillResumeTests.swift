import Foundation
import XCTest
import KVCCollect
import KVCCore
import KVCTensor

/// SIGKILL at seeded random moments, then a restart of the same command, until it completes: the result must be
/// byte-identical to an uninterrupted run, no kill may cost more than one checkpoint interval (or one shard), and no
/// file on disk may ever be half-written. Runs the real `kvc-train` / `kvc-collect` on tiny configurations.
final class KillResumeTests: XCTestCase {
    struct KillRun {
        var kills = 0
        var attempts = 0
        var uninterruptedSeconds = 0.0
    }

    /// Runs `arguments(dir)` once uninterrupted and moves its directory aside; then runs it again in the same directory
    /// (paths end up inside outputs, e.g. the recipe copy in an adapter) with `attempts` SIGKILLs at seeded moments,
    /// restarting after each, and a final run to the end. With `progress` (units of work done, read from the directory)
    /// and `units`, each kill waits for a seeded random unit count past the current one (so kills land after
    /// checkpoints, and resumes happen), then a seeded random fraction of one unit's time (so they land inside steps and writes); without,
    /// kills fall uniformly in 5-90% of the uninterrupted time. `afterKill` inspects the directory after every kill.
    private func killAndResume(_ tool: String, tag: String, seed: UInt64, attempts: Int,
                               progress: ((String) -> Int)? = nil, units: Int = 1,
                               arguments: (String) -> [String],
                               afterKill: (String) throws -> Void) throws -> (reference: String, resumed: String, run: KillRun) {
        let exe = try ChildProcess.executable(tool)
        let resumed = try ChildProcess.temporaryDirectory(tag)
        let clean = try ChildProcess.run(exe, arguments(resumed))
        XCTAssertEqual(clean.status, 0, "uninterrupted \(tool) failed: \(clean.stderr.suffix(2000))")
        var run = KillRun(attempts: attempts, uninterruptedSeconds: clean.seconds)
        let reference = resumed + "-reference"
        try FileManager.default.moveItem(atPath: resumed, toPath: reference)
        try FileManager.default.createDirectory(atPath: resumed, withIntermediateDirectories: true)
        var rng = SeededRandom(seed: seed)
        for attempt in 0..<attempts {
            let outcome: ChildProcess.Outcome
            if let progress {
                // A unit count past what is on disk now, before the last one (the run must not just complete),
                // spread so that the remaining attempts still find work to interrupt.
                let base = progress(resumed)
                guard base < units - 1 else { break }
                let target = base + 1 + rng.nextInt(below: max(1, (units - 1 - base) / (attempts - attempt)))
                let delay = clean.seconds / Double(units + 1) * Double(rng.nextUniform())
                outcome = try ChildProcess.run(exe, arguments(resumed), killWhen: { progress(resumed) >= target },
                                               killAfter: delay)
            } else {
                outcome = try ChildProcess.run(exe, arguments(resumed), killAfter: clean.seconds * Double(0.05 + 0.85 * rng.nextUniform()))
            }
            if outcome.killed {
                run.kills += 1
                try afterKill(resumed)
            } else {
                XCTAssertEqual(outcome.status, 0, "\(tool) failed after a restart: \(outcome.stderr.suffix(2000))")
            }
        }
        let last = try ChildProcess.run(exe, arguments(resumed))
        XCTAssertEqual(last.status, 0, "\(tool) did not complete after the kills: \(last.stderr.suffix(2000))")
        let leftovers = try FileManager.default.subpathsOfDirectory(atPath: resumed).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [], "temporary files of killed writers were left behind")
        print("\(tool) kill test: \(run.kills) of \(attempts) SIGKILLs landed before the end; uninterrupted run "
              + String(format: "%.1f s", clean.seconds))
        return (reference, resumed, run)
    }

    /// Asserts every regular file is byte-identical in both directories, except `ignoring` (compared by `compare`).
    private func assertIdentical(_ a: String, _ b: String, ignoring: Set<String> = [], file: StaticString = #filePath,
                                 line: UInt = #line) throws -> Int {
        let x = try ChildProcess.contents(of: a), y = try ChildProcess.contents(of: b)
        XCTAssertEqual(Set(x.keys), Set(y.keys), "different files", file: file, line: line)
        var compared = 0
        for (name, data) in x where !ignoring.contains(name) {
            XCTAssertEqual(data, y[name], "\(name) differs between the uninterrupted and the killed run", file: file, line: line)
            compared += 1
        }
        return compared
    }

    // MARK: kvc-train, kind: front-end

    func testFrontEndTrainingKilledAndResumedIsBitIdentical() throws {
        try ChildProcess.requireAssets()
        let checkpointEvery = 2
        let recipe = { (dir: String) in (try? TinyRuns.frontEnd(in: dir, checkpointEvery: checkpointEvery)) ?? [] }
        var worstLoss = 0, resumedFrom: [Int] = []
        let (ref, killed, run) = try killAndResume("kvc-train", tag: "fe", seed: 11, attempts: 3,
                                                   progress: { Self.stepsLogged($0 + "/run/metrics.jsonl") }, units: 5,
                                                   arguments: recipe) { dir in
            // What a kill may cost: the steps logged after the last checkpoint, at most one interval.
            let state = dir + "/run/train-state.safetensors"
            let saved = FileManager.default.fileExists(atPath: state) ? TrainingCheckpoint.savedStep(at: state) : 0
            XCTAssertNotNil(saved, "\(state) exists but does not load: a kill left it half-written")
            let logged = Self.stepsLogged(dir + "/run/metrics.jsonl")
            worstLoss = max(worstLoss, logged - (saved ?? 0))
            resumedFrom.append(saved ?? 0)
            XCTAssertLessThanOrEqual(logged - (saved ?? 0), checkpointEvery, "a kill lost more than one checkpoint interval")
        }
        XCTAssertGreaterThanOrEqual(run.kills, 2, "too few kills landed while training ran")
        XCTAssertTrue(resumedFrom.contains { $0 > 0 }, "no kill came after a checkpoint: nothing was resumed")
        let compared = try assertIdentical(ref, killed, ignoring: ["run/metrics.jsonl"])
        XCTAssertEqual(try metricsWithoutTimes(ref + "/run/metrics.jsonl"), try metricsWithoutTimes(killed + "/run/metrics.jsonl"))
        XCTAssertEqual(compared, 4)   // recipe, output, run/frontend.safetensors, run/train-state.safetensors
        print("front-end kill test: \(run.kills) kills, checkpoints on disk at the kills: steps \(resumedFrom), \(compared) "
              + "files + metrics identical, most steps lost to a kill \(worstLoss)")
    }

    /// Distinct steps in a metrics log (a killed run may have logged steps after its last checkpoint).
    private static func stepsLogged(_ path: String) -> Int {
        let lines = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n")
        return Set(lines.compactMap { line -> Int? in
            guard let range = line.range(of: "\"step\":") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }).count
    }

    /// The metrics log with the wall-clock field removed (everything else must match to the bit).
    private func metricsWithoutTimes(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
            var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            object["seconds"] = nil
            return String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
        }
    }

    // MARK: kvc-collect, then kvc-train kind: capsule on what it collected

    func testCollectAndCapsuleFitKilledAndResumedAreBitIdentical() throws {
        try ChildProcess.requireAssets()
        let shards = { (dir: String) in
            ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("shard-") }.count
        }
        var shardsAtKills: [Int] = []
        let (ref, killed, run) = try killAndResume("kvc-collect", tag: "collect", seed: 5, attempts: 4, progress: shards,
                                                   units: 8, arguments: { TinyRuns.collect(out: $0, limit: 8, perShard: 1) }) { dir in
            shardsAtKills.append(shards(dir))
            // Every shard on disk is complete (a kill costs at most the shard being collected), and so is the manifest.
            for name in try FileManager.default.contentsOfDirectory(atPath: dir) where name.hasPrefix("shard-") {
                let reader = try CacheShard.Reader(path: dir + "/" + name)
                XCTAssertEqual(reader.count, 1, "\(name) is incomplete")
            }
            if FileManager.default.fileExists(atPath: dir + "/manifest.json") { _ = try CacheManifest.read(directory: dir) }
        }
        XCTAssertGreaterThanOrEqual(run.kills, 2, "too few kills landed while collecting")
        let compared = try assertIdentical(ref, killed)
        XCTAssertEqual(compared, 9)   // 8 shards + manifest.json

        // The capsule fit of the collected caches: same command after kills, same adapter and report.
        let recipe = { (dir: String) in (try? TinyRuns.capsule(in: dir, caches: ref)) ?? [] }
        let capsule = try killAndResume("kvc-train", tag: "capsule", seed: 9, attempts: 3, arguments: recipe) { dir in
            if FileManager.default.fileExists(atPath: dir + "/run/adapter.safetensors") {
                _ = try SafetensorsFile(path: dir + "/run/adapter.safetensors")
            }
        }
        let fitted = try assertIdentical(capsule.reference, capsule.resumed)
        XCTAssertEqual(fitted, 4)   // recipe, run/adapter.safetensors, run/report.json, run/recipe.yaml
        print("collect kill test: \(run.kills) kills (complete shards on disk at the kills: \(shardsAtKills)), \(compared) "
              + "files identical; capsule fit: \(capsule.run.kills) kills, "
              + "\(fitted) files identical")
    }

    /// The trained key MLP of a capsule (`reconstructor: kind: mlp`), checkpointed per layer: killed after seeded
    /// numbers of layers, it ends with the same adapter, MLP checkpoint and metrics as an uninterrupted run.
    func testCapsuleMLPTrainingKilledAndResumedIsBitIdentical() throws {
        try ChildProcess.requireAssets()
        let caches = try TinyRuns.sharedCaches()
        let layersDone = { (dir: String) in
            ((try? String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8)) ?? "")
                .components(separatedBy: "\"event\":\"validation\"").count - 1
        }
        var layersAtKills: [Int] = []
        let (ref, killed, run) = try killAndResume("kvc-train", tag: "mlp", seed: 13, attempts: 4, progress: layersDone, units: 30,
                                                   arguments: { (try? TinyRuns.capsule(in: $0, caches: caches, mlp: true)) ?? [] }) {
            layersAtKills.append(layersDone($0))
        }
        XCTAssertGreaterThanOrEqual(run.kills, 2, "too few kills landed while training ran")
        let compared = try assertIdentical(ref, killed)
        XCTAssertEqual(compared, 6)   // recipe, adapter, MLP checkpoint, metrics, report, recipe copy
        print("capsule MLP kill test: \(run.kills) kills (layers done at the kills: \(layersAtKills)), \(compared) files identical")
    }
}
