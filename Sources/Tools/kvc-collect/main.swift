import ArgumentParser
import Foundation
import KVCCollect
import KVCCollector
import KVCCore
import KVCSmolVLM
import KVCVision

/// Collects the frozen VLM's KV caches into shards: a thin command over `CollectionPlan` and `CacheCollector`.
struct CollectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-collect",
        abstract: "Run the frozen VLM over prompts and store the vision-span KV caches and text queries as shards.",
        discussion: """
            kvc-collect --task easy-vqa --split train --out caches/easyvqa-train
            kvc-collect --task easy-vqa --split train --out caches/easyvqa-train --shard 1/4   (one of four processes)
            Rerunning the same command completes what is missing and rewrites nothing finished; every run rebuilds
            manifest.json from the complete shards in --out (which is how --shard parts merge).
            """)

    @Option(help: "Benchmark (only easy-vqa).") var task = "easy-vqa"
    @Option(help: "Dataset split: train or test.") var split = "train"
    @Option(help: "Output directory for shard-*.safetensors and manifest.json.") var out: String
    @Option(name: .customLong("front-end"), help: "Front-end checkpoint.") var frontEnd = FrontEnd.defaultCheckpoint
    @Option(help: "GGUF model file (default: the project's SmolLM2 asset), or a Hugging Face SmolVLM directory.")
    var model: String?
    @Option(help: "easy-VQA directory (default: the project's asset).") var data: String?
    @Option(help: "Collect only the first N prompts of the plan.") var limit: Int?
    @Option(help: "Write only shards s with s % n == i (i/n).") var shard = "0/1"
    @Option(name: .customLong("images-per-prompt"), help: "Images per prompt (the question is about one of them).")
    var imagesPerPrompt = 1
    @Option(name: .customLong("samples-per-shard"), help: "Prompts per shard file.") var samplesPerShard = 64
    @Option(help: "Seed of the question choice.") var seed: UInt64 = 0
    @Option(help: "Decoder threads (default: all cores).") var threads: Int?
    @Flag(help: "No progress on stderr.") var quiet = false

    func validate() throws {
        if task != "easy-vqa" { throw ValidationError("--task: only 'easy-vqa' is supported, not '\(task)'") }
        if EasyVQA.Split(rawValue: split) == nil { throw ValidationError("--split must be 'train' or 'test', not '\(split)'") }
        if let limit, limit < 1 { throw ValidationError("--limit must be >= 1") }
        if !(1...64).contains(imagesPerPrompt) { throw ValidationError("--images-per-prompt must be in 1...64") }
        if samplesPerShard < 1 { throw ValidationError("--samples-per-shard must be >= 1") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        do { _ = try ShardSelection(parsing: shard) } catch { throw ValidationError("\(error)") }
    }

    func run() throws {
        do {
            let print = { (s: String) in FileHandle.standardError.write(Data("kvc-collect: \(s)\n".utf8)) }
            let (vlm, hashes) = try loadModel()
            if let threads { vlm.backbone.model.threads = threads }
            let splitValue = EasyVQA.Split(rawValue: split)!
            let plan = try CollectionPlan.easyVQA(try EasyVQA(root: data ?? Assets.easyVQA), split: splitValue,
                                                  imagesPerPrompt: imagesPerPrompt, seed: seed, limit: limit,
                                                  samplesPerShard: samplesPerShard)
            for entry in plan.datasetSkips { print("dataset entry skipped: \(entry)") }
            let selection = try ShardSelection(parsing: shard)
            print("\(plan.items.count) prompts in \(plan.shardCount) shards; this process writes shards \(selection) "
                  + "into \(out) (fingerprint \(hashes.fingerprint))")
            let source = ["task": task, "split": split, "images_per_prompt": String(imagesPerPrompt), "seed": String(seed),
                          "samples_per_shard": String(samplesPerShard), "model_xxh128": hashes.model,
                          "front_end_xxh128": hashes.frontEnd]
            let summary = try CacheCollector(vlm: vlm, fingerprint: hashes.fingerprint)
                .run(plan: plan, directory: out, shards: selection, source: source, progress: !quiet)
            report(summary, print: { Swift.print($0) })
        } catch let error as KVCError {
            FileHandle.standardError.write(Data("kvc-collect: error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }

    /// The project's VLM (GGUF decoder + trained front end), or a Hugging Face SmolVLM directory given as --model.
    private func loadModel() throws -> (VisionLanguageModel, (fingerprint: String, model: String, frontEnd: String)) {
        if let model = SmolVLM.modelDirectory(model) {
            let fingerprint = try SmolVLM.fingerprint(directory: model)
            return (try SmolVLM(directory: model).visionLanguageModel(), (fingerprint, fingerprint, ""))
        }
        let modelPath = try Assets.require(model ?? Assets.smolLM2GGUF)
        guard FileManager.default.fileExists(atPath: frontEnd) else {
            throw KVCError.file(frontEnd, "front-end checkpoint not found; train one (kvc-train recipes/frontend-easyvqa.yaml) "
                                + "or pass --front-end PATH")
        }
        return (try VisionLanguageModel.load(modelPath: modelPath, frontEndPath: frontEnd),
                try CacheCollector.fingerprint(modelPath: modelPath, frontEndPath: frontEnd))
    }

    private func report(_ s: CacheCollector.Summary, print: (String) -> Void) {
        let written = s.samplesWritten
        print("shards written \(s.shardsWritten.count), already complete \(s.shardsAlreadyComplete.count); "
              + "samples written \(written), skipped \(s.skipped.count) in \(String(format: "%.1f", s.seconds)) s "
              + "(\(String(format: "%.2f", s.samplesPerSecond)) prompts/s)")
        for skip in s.skipped.prefix(10) { print("  skipped \(skip.id): \(skip.reason)") }
        if s.skipped.count > 10 { print("  ... and \(s.skipped.count - 10) more (listed in the shard headers and manifest)") }
        if written > 0 {
            let t = s.timing
            let l = s.manifest?.layout
            print(String(format: "per sample: %.0f bytes stored, formula %.0f (%d layers x %d kv heads x N=%.0f x %d x 2 B x 2 "
                         + "+ %d x %d heads x T=%.1f x %d x 2 B + 4 B per position); phases: front end %.1f ms, "
                         + "forward %.1f ms, extract %.1f ms",
                         Double(s.tensorBytesWritten) / Double(written), Double(s.formulaBytes) / Double(written),
                         l?.layers ?? 0, l?.kvHeads ?? 0, Double(s.visionTokens) / Double(written), l?.headDim ?? 0,
                         l?.layers ?? 0, l?.queryHeads ?? 0, Double(s.textTokens) / Double(written), l?.headDim ?? 0,
                         1000 * t.frontEnd / Double(written), 1000 * t.forward / Double(written),
                         1000 * t.extract / Double(written)))
        }
        if let m = s.manifest {
            print("manifest: \(m.sampleCount) samples in \(m.shards.count) shards, \(m.skipped.count) skipped, "
                  + String(format: "%.0f bytes/sample", m.bytesPerSample))
        }
    }
}

CollectCommand.main()
