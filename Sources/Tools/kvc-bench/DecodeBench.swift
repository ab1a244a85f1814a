import ArgumentParser
import Dispatch
import Foundation
import KVCBackbone
import KVCCore
import KVCGGUF

/// Single-stream speed of the inference decoder: prefill and decode tokens/s at each thread count, next to
/// llama.cpp's figures for the same Q4_1 file on a machine of this kind.
struct DecodeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Prefill and single-stream decode tokens/s of the SmolLM2 decoder at 1 and 2 threads.",
        discussion: """
        Regime: one sequence, batch 1, float16 KV cache. Prefill = one forward over an N-token prompt from an empty
        cache (logits of the last position). Decode = greedy tokens one at a time after a 1-token prompt (like
        llama-bench's tg; --decode-context N decodes after an N-token prompt, untimed). Threads = OpenBLAS threads
        (prefill) and this decoder's kernel threads (decode).
        llama.cpp reference (CPU build, this Q4_1 file, this kind of 2-core machine): about 330-350 prefill and
        140 decode tokens/s with 2 threads, 180 and 92 with 1 thread.
        """)

    @Option(help: "Path to the GGUF model.") var model: String = Assets.smolLM2GGUF
    @Option(name: .customLong("prompt-tokens"), parsing: .upToNextOption, help: "Prompt lengths for prefill.")
    var promptTokens: [Int] = [128, 256]
    @Option(name: .customLong("decode-tokens"), help: "Tokens generated per decode run.") var decodeTokens = 128
    @Option(name: .customLong("decode-context"), help: "Prompt tokens in the cache before decoding starts (1 = like llama-bench tg).")
    var decodeContext = 1
    @Option(parsing: .upToNextOption, help: "Thread counts to measure.") var threads: [Int] = [1, 2]
    @Option(help: "Timed repetitions (the best is reported, after one warm-up).") var repeats = 3
    @Option(parsing: .upToNextOption,
            help: "Batch sizes: instead of prefill and single-stream decode, measure batched decode (each sequence with its own --decode-context-token prompt, one token each per step, LlamaModel.decodeStep), e.g. --batch 1 2 3 4 8 9 16.")
    var batch: [Int] = []
    @Option(name: .customLong("weight-products"), parsing: .upToNextOption,
            help: "Arithmetic of the decode weight products to measure, in turn: float32 (default; bit-identical batches) and/or bfloat16 (AVX-512 BF16 dot products; see WeightProducts).")
    var weightProducts: [WeightProducts] = [.float32]
    @Flag(help: "Print JSON instead of a table.") var json = false

    struct Row: Codable {
        var threads: Int
        var prefillTokensPerSecond: [String: Double]
        var decodeTokensPerSecond: Double
        /// Decode tokens per second of process CPU time (all threads): what the kernels achieve per core, robust to
        /// other processes taking turns on the cores.
        var decodeTokensPerCPUSecond: Double
        var decodeWeightGBPerSecond: Double
        var llamaCppPrefill: String
        var llamaCppDecode: Double
    }

    struct Report: Codable {
        var bench = "decode"
        var regime = "single stream, batch 1, float16 KV cache"
        var decodeContext: Int
        var loadSeconds: Double
        var decodeWeightBytes: Int
        /// 1-minute load average when the run started: above the core count, other processes share the cores and
        /// wall-clock rates drop.
        var loadAverage: Double
        var cores: Int
        var rows: [Row]
    }

    func validate() throws {
        if promptTokens.isEmpty || promptTokens.contains(where: { $0 < 1 || $0 > 8192 }) {
            throw ValidationError("--prompt-tokens must be in 1...8192")
        }
        if decodeTokens < 2 { throw ValidationError("--decode-tokens must be >= 2") }
        if decodeContext < 1 || decodeContext + decodeTokens > 8192 {
            throw ValidationError("--decode-context must be >= 1 and leave room for --decode-tokens within 8192")
        }
        if threads.isEmpty || threads.contains(where: { $0 < 1 }) { throw ValidationError("--threads must be >= 1") }
        if repeats < 1 { throw ValidationError("--repeats must be >= 1") }
        if batch.contains(where: { $0 < 1 || $0 > 256 }) { throw ValidationError("--batch sizes must be in 1...256") }
        if weightProducts.isEmpty { throw ValidationError("--weight-products needs at least one of float32, bfloat16") }
        if batch.isEmpty && weightProducts.count > 1 {
            throw ValidationError("--weight-products takes one value without --batch (the single-stream table has no column for it)")
        }
    }

    func run() throws {
        let loadAverage = Self.loadAverage()
        let start = DispatchTime.now()
        let llama = try LlamaModel(file: GGUFFile(path: Assets.require(model)))
        let loadSeconds = elapsed(since: start)
        // A fixed prompt of ordinary tokens (the vocabulary's first ids are bytes and specials).
        var rng = SeededRandom(seed: 42)
        let prompt = (0..<max(promptTokens.max() ?? 1, decodeContext)).map { _ in 1000 + rng.nextInt(below: 20_000) }
        let decodePrompt = Array(prompt.prefix(decodeContext))

        if !batch.isEmpty { return try runBatched(llama, loadAverage: loadAverage) }
        var rows: [Row] = []
        llama.weightProducts = weightProducts[0]
        for n in threads {
            BLAS.threads = n
            llama.threads = n
            var prefill: [String: Double] = [:]
            for length in promptTokens {
                let ids = Array(prompt.prefix(length))
                let best = try bestTime { _ = try llama.forward(tokens: ids, cache: llama.makeCache(initialCapacity: length)) }
                prefill["\(length)"] = Double(length) / best
            }
            let (decodeSeconds, cpuSeconds) = try measureDecode(llama, prompt: decodePrompt)
            let decodeRate = Double(decodeTokens) / decodeSeconds
            rows.append(Row(threads: n, prefillTokensPerSecond: prefill, decodeTokensPerSecond: decodeRate,
                            decodeTokensPerCPUSecond: Double(decodeTokens) / cpuSeconds,
                            decodeWeightGBPerSecond: decodeRate * Double(llama.decodeWeightBytes) / 1e9,
                            llamaCppPrefill: n >= 2 ? "330-350" : "180", llamaCppDecode: n >= 2 ? 140 : 92))
        }
        let report = Report(decodeContext: decodeContext, loadSeconds: loadSeconds, decodeWeightBytes: llama.decodeWeightBytes, loadAverage: loadAverage,
                            cores: ProcessInfo.processInfo.activeProcessorCount, rows: rows)
        if json {
            try printJSON(report)
            return
        }
        print(String(format: "SmolLM2-135M Q4_1, %@; model load %.2f s; decode reads %.1f MB of weights per token; "
                     + "decoding %d tokens after %d in the cache", report.regime, loadSeconds,
                     Double(llama.decodeWeightBytes) / 1e6, decodeTokens, decodeContext))
        print(String(format: "load average %.2f on %d cores when started%@", loadAverage, report.cores,
                     loadAverage > Double(report.cores) ? " (busy machine: wall-clock rates are low; see tok/CPU-s)" : ""))
        let prefillHeaders = promptTokens.map { "prefill \($0) tok/s" }
        print("| threads | " + prefillHeaders.joined(separator: " | ")
              + " | decode tok/s | decode tok/CPU-s | weights GB/s | llama.cpp prefill | llama.cpp decode |")
        print("|---|" + String(repeating: "---|", count: prefillHeaders.count + 5))
        for row in rows {
            let prefill = promptTokens.map { String(format: "%.0f", row.prefillTokensPerSecond["\($0)"] ?? 0) }
            print("| \(row.threads) | " + prefill.joined(separator: " | ")
                  + String(format: " | %.1f | %.1f | %.1f | %@ | %.0f |", row.decodeTokensPerSecond,
                           row.decodeTokensPerCPUSecond, row.decodeWeightGBPerSecond,
                           row.llamaCppPrefill, row.llamaCppDecode))
        }
    }

    struct BatchedReport: Codable {
        var bench = "decode-batched"
        var regime = "sequences decoded together, one token each per step, float16 KV caches"
        var decodeContext: Int
        var decodeTokens: Int
        var loadAverage: Double
        var loadAverageEnd: Double
        var cores: Int
        var rows: [BatchedDecodeBench.Row]
    }

    private func runBatched(_ llama: LlamaModel, loadAverage: Double) throws {
        let bench = BatchedDecodeBench(model: llama, context: decodeContext, decodeTokens: decodeTokens, repeats: repeats)
        var rows: [BatchedDecodeBench.Row] = []
        for products in weightProducts {
            llama.weightProducts = products
            for n in threads {
                BLAS.threads = n
                llama.threads = n
                rows += try bench.measure(batches: batch)
            }
        }
        let report = BatchedReport(decodeContext: decodeContext, decodeTokens: decodeTokens, loadAverage: loadAverage,
                                   loadAverageEnd: Self.loadAverage(), cores: ProcessInfo.processInfo.activeProcessorCount,
                                   rows: rows)
        if json {
            try printJSON(report)
            return
        }
        print(String(format: "SmolLM2-135M Q4_1, %@; %d tokens in each cache, %d timed steps, best of %d; load average %.2f "
                     + "at start, %.2f at the end, %d cores", report.regime, decodeContext, decodeTokens, repeats, loadAverage,
                     report.loadAverageEnd, report.cores))
        BatchedDecodeBench.printTable(rows)
    }

    private func printJSON<T: Encodable>(_ report: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        print(String(decoding: try encoder.encode(report), as: UTF8.self))
    }

    /// Best wall-clock seconds of `repeats` runs after one warm-up.
    private func bestTime(_ body: () throws -> Void) throws -> Double {
        try body()
        var best = Double.infinity
        for _ in 0..<repeats {
            let start = DispatchTime.now()
            try body()
            best = min(best, elapsed(since: start))
        }
        return best
    }

    /// Greedy decoding of `decodeTokens` tokens after `prompt` (prefilled untimed): the best wall-clock seconds and
    /// the least process CPU seconds over `repeats` runs, after one warm-up.
    private func measureDecode(_ llama: LlamaModel, prompt: [Int]) throws -> (wall: Double, cpu: Double) {
        var best = (wall: Double.infinity, cpu: Double.infinity)
        for run in 0...repeats {
            let cache = llama.makeCache(initialCapacity: prompt.count + decodeTokens)
            var logits = try llama.forward(tokens: prompt, cache: cache)
            let start = DispatchTime.now(), cpuStart = SystemLoad.processCPUSeconds()
            for _ in 0..<decodeTokens {
                let next = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
                logits = try llama.forward(tokens: [next], cache: cache)
            }
            if run > 0 {
                best.wall = min(best.wall, elapsed(since: start))
                best.cpu = min(best.cpu, SystemLoad.processCPUSeconds() - cpuStart)
            }
        }
        return best
    }


    private static func loadAverage() -> Double { SystemLoad.oneMinute() }

    private func elapsed(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}
