import ArgumentParser
import Foundation
import KVCCollector
import KVCCore

/// Collection throughput next to the VLM's plain prefill of the same easy-VQA prompts (see `CollectionBenchmark`).
struct CollectBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collect",
        abstract: "kvc-collect throughput vs plain prefill of the same prompts (goal: within 15%).",
        discussion: """
        Regime: one prompt at a time (the easy-VQA prompt with one image: about 87 tokens, 64 of them image tokens),
        float16 cache, BLAS threads as configured. Passes over the same prompts alternate; the best of --repeats is
        reported, in prompts per wall-clock second and per CPU second.
        """)

    @Option(help: "Path to the GGUF model.") var model: String = Assets.smolLM2GGUF
    @Option(name: .customLong("front-end"), help: "Front-end checkpoint (default: a randomly initialised front end).")
    var frontEnd: String?
    @Option(help: "easy-VQA directory.") var data: String = Assets.easyVQA
    @Option(help: "Prompts per pass.") var prompts = 16
    @Option(name: .customLong("images-per-prompt"), help: "Images per prompt.") var imagesPerPrompt = 1
    @Option(help: "Timed repetitions of each pass (best reported, after one warm-up).") var repeats = 3
    @Flag(help: "Print JSON instead of a table.") var json = false

    func validate() throws {
        if prompts < 1 { throw ValidationError("--prompts must be >= 1") }
        if repeats < 1 { throw ValidationError("--repeats must be >= 1") }
        if !(1...64).contains(imagesPerPrompt) { throw ValidationError("--images-per-prompt must be in 1...64") }
    }

    func run() throws {
        let loadAverage = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))
            .flatMap { $0.split(separator: " ").first.flatMap { Double($0) } } ?? 0
        let vlm = try CollectionBenchmark.loadVLM(modelPath: Assets.require(model), frontEndPath: frontEnd.map(Assets.require))
        let plan = try CollectionBenchmark.easyVQAPlan(root: data, prompts: prompts, imagesPerPrompt: imagesPerPrompt)
        let scratch = NSTemporaryDirectory() + "kvc-bench-collect-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let figures = try CollectionBenchmark.run(vlm: vlm, plan: plan, repeats: repeats, scratch: scratch)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            print(String(decoding: try encoder.encode(figures), as: UTF8.self))
            return
        }
        print("kvc-collect vs plain prefill: \(plan.items.count) easy-VQA train prompts, \(imagesPerPrompt) image(s) each, "
              + "best of \(repeats); load average \(loadAverage) on \(ProcessInfo.processInfo.activeProcessorCount) cores"
              + (loadAverage > Double(ProcessInfo.processInfo.activeProcessorCount) ? " (busy: compare prompts/CPU-s)" : ""))
        print("| pass | prompts/s | prompts/CPU-s | vs plain prefill (wall) | vs plain prefill (CPU) |")
        print("|---|---|---|---|---|")
        let plainCPU = figures[0].promptsPerCPUSecond
        for f in figures {
            print(String(format: "| %@ | %.2f | %.2f | %.3f | %.3f |", f.name, f.promptsPerSecond, f.promptsPerCPUSecond,
                         f.relativeToPlainPrefill, f.promptsPerCPUSecond / plainCPU))
        }
    }
}
