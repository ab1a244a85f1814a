import Foundation
import XCTest
import KVCVision

/// Tiny configurations of the real commands (seconds each), shared by the kill and fault tests.
enum TinyRuns {
    static let encoder = ChildProcess.packageRoot + "/checkpoints/frontend-easyvqa-run/encoder-stage1.safetensors"
    static let frontEnd = ChildProcess.packageRoot + "/" + FrontEnd.defaultCheckpoint

    /// Writes `dir/recipe.yaml` for a 1-image-per-step front-end alignment (encoder from the committed stage 1) and
    /// returns kvc-train's arguments. `alignment` lines replace the defaults of the same key.
    static func frontEnd(in dir: String, steps: Int = 5, checkpointEvery: Int = 2, encoder: String = encoder,
                         alignment: [String: String] = [:]) throws -> [String] {
        var keys = ["steps": "\(steps)", "images_per_step": "1", "questions_per_image": "1", "warmup_steps": "2",
                    "eval_every": "1000", "eval_questions": "2", "checkpoint_every": "\(checkpointEvery)"]
        keys.merge(alignment) { $1 }
        let text = """
            kind: front-end
            seed: 7
            model: \(ChildProcess.model)
            run_dir: \(dir)/run
            output: \(dir)/frontend.safetensors
            encoder:
              checkpoint: \(encoder)
            projector:
              hidden: 32
            alignment:

            """ + keys.sorted { $0.key < $1.key }.map { "  \($0.key): \($0.value)\n" }.joined()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try text.write(toFile: dir + "/recipe.yaml", atomically: true, encoding: .utf8)
        return [dir + "/recipe.yaml", "--threads", "1"]
    }

    /// Writes `dir/recipe.yaml` for a capsule fit of `caches` at r = 0.6 (with `mlp`, a small trained key MLP on top
    /// of the linear map) and returns kvc-train's arguments.
    static func capsule(in dir: String, caches: String, mlp: Bool = false) throws -> [String] {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let reconstructor = mlp ? "reconstructor:\n  kind: mlp\n  hidden: 8\n  epochs: 2\n  batch: 4\n" : ""
        try ("kind: capsule\nseed: 1\ncaches: \(caches)\nrun_dir: \(dir)/run\nratio: 0.6\nkey_ratio: 0.5\nvalidation_every: 3\n"
             + reconstructor).write(toFile: dir + "/recipe.yaml", atomically: true, encoding: .utf8)
        return [dir + "/recipe.yaml", "--model", ChildProcess.model, "--threads", "1"]
    }

    /// kvc-collect's arguments for the first `limit` training prompts, `perShard` to a shard.
    static func collect(out: String, limit: Int = 6, perShard: Int = 2) -> [String] {
        ["--split", "train", "--out", out, "--front-end", frontEnd, "--model", ChildProcess.model, "--data", ChildProcess.easyVQA,
         "--limit", "\(limit)", "--samples-per-shard", "\(perShard)", "--threads", "1", "--quiet"]
    }

    /// A cache directory of 3 one-sample shards, collected once per test process.
    static func sharedCaches() throws -> String {
        if let dir = cachedCaches { return dir }
        let dir = try ChildProcess.temporaryDirectory("caches")
        let outcome = try ChildProcess.run(try ChildProcess.executable("kvc-collect"), collect(out: dir, limit: 3, perShard: 1))
        guard outcome.status == 0 else { throw KVCTestError("kvc-collect failed: \(outcome.stderr.suffix(2000))") }
        cachedCaches = dir
        return dir
    }
    nonisolated(unsafe) private static var cachedCaches: String?
}
