import ArgumentParser
import Dispatch
import Foundation
import KVCBackbone
import KVCCapsule
import KVCCollector
import KVCCore
import KVCVision

/// What the capsule saves and costs in speed: single-stream decoding, and tokens/s under a fixed KV memory budget,
/// for the full float16 cache and each adapter in dense and fused mode, side by side in one run.
struct CapsuleBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capsule",
        abstract: "Decode speed of the capsule cache (dense and fused) against the full float16 cache, single stream and under a KV memory budget.",
        discussion: """
        Prompts: --images easy-VQA test images per prompt (the VLM's prefix, sequence s using images s*K..<(s+1)*K),
        then one question; capsule caches compress the vision span after the prefix. Each sequence then decodes
        --decode-tokens greedy tokens (not stopping at end of turn), after 2 untimed warm-up tokens.

        Per method and ratio:
          kv_bytes / kv_bytes_full   bytes the cache stores for one sequence at the end of decoding, and what a full
                                     float16 cache stores for the same positions;
          decode_tps, step_ms        single-stream decode rate (batch 1, --threads decoder threads);
          attention_ms_per_step      time inside the cache's attention per step, all layers (dense: rebuild + kernel;
                                     fused: the fused kernel; full: the kernel);
          attention_cpu_ms_per_step  CPU time of the decoding thread inside the attention per step: at --threads 1
                                     the whole attention cost, unaffected by other processes taking the core;
          overhead_ms_per_step       attention_ms_per_step minus the full cache's, and overhead_share = that / step_ms
                                     (what reconstruction costs a decode step);
          batch, tps                 per budget of --budget-mb (one row per method and budget): the sequences whose
                                     kv_bytes fit it (at most --max-batch), decoded together (LlamaModel.decodeStep),
                                     and their total tokens/s; tps_vs_full = tps / full's tps at the same budget.
                                     Each distinct (method, batch) is decoded once per round and the rounds take turns
                                     (full, capsule, full, ...), so a slow minute of the machine hits every method;
                                     tps is the median over --rounds, tps_vs_full the median of the per-round ratios,
                                     tps_rounds and tps_vs_full_rounds list every round;
          *_cpu                      the same rates per CPU-second of the process: they hold up when other processes
                                     share the cores (use --threads 1 for them, where no thread spins waiting for work).
        Dense mode also keeps one layer of float32 scratch per sequence, not counted in kv_bytes or the budget.
        An adapter with a trained MLP key residual is served by the dense rebuild only; its fused row
        (capsule-fused-linear-keys) evaluates the linear keys without the residual: the same bytes and the same fused
        work per step, not the same accuracy.
        """)

    @Option(help: "GGUF model file (default: the project's SmolLM2 asset).") var model: String?
    @Option(name: .customLong("front-end"), help: "Front-end checkpoint.") var frontEnd = FrontEnd.defaultCheckpoint
    @Option(parsing: .upToNextOption, help: "Capsule adapters (.kvcap), one row pair (dense, fused) each.")
    var adapters = ["checkpoints/capsule-r0.6.kvcap", "checkpoints/capsule-r0.8.kvcap"]
    @Option(parsing: .upToNextOption, help: "Capsule modes to measure (dense, fused).") var modes = ["dense", "fused"]
    @Option(help: "easy-VQA directory (default: the project's asset).") var data: String?
    @Option(help: "Images per prompt.") var images = 8
    @Option(name: .customLong("budget-mb"), parsing: .upToNextOption,
            help: "KV memory budgets in MB (10^6 bytes) for the batched regime, e.g. --budget-mb 15 24 30 64.")
    var budgetMB: [Double] = [64]
    @Option(name: .customLong("max-batch"), help: "Most sequences decoded together.") var maxBatch = 24
    @Option(name: .customLong("decode-tokens"), help: "Timed decode steps per run.") var decodeTokens = 32
    @Option(help: "Decoder and BLAS threads.") var threads = 2
    @Option(help: "The question after the images.") var question = "In image 1, what shape is it?"
    @Option(help: "Budget runs per method, interleaved across methods; the report takes medians.") var rounds = 1
    @Option(name: .customLong("weight-products"),
            help: "Arithmetic of the decode weight products, for every method alike: float32 or bfloat16 (AVX-512 BF16 dot products; an extra sequence of a batch costs less than half as much, see WeightProducts).")
    var weightProducts: WeightProducts = .float32
    @Flag(help: "Print one JSON object instead of a table.") var json = false

    struct Row: Codable {
        var method: String
        var ratio: Double
        var ratioMeasured: Double?
        var kvBytes: Int
        var kvBytesFull: Int
        var decodeTps: Double
        /// Single-stream tokens per CPU-second of the process (robust to other load; meaningful at --threads 1, where
        /// no thread spins waiting for work).
        var decodeTpsCpu: Double
        var stepMs: Double
        var attentionMsPerStep: Double
        /// CPU time of the calling thread inside the attention (all of it at --threads 1; robust to other load).
        var attentionCpuMsPerStep: Double
        var overheadMsPerStep: Double
        var overheadShare: Double
        var budgetMb: Double
        var batch: Int
        var tps: Double
        var tpsVsFull: Double
        /// Batched tokens per CPU-second, and its ratio to the full cache's.
        var tpsCpu: Double
        var tpsCpuVsFull: Double
        /// Tokens/s of each round under the budget (one entry without --rounds).
        var tpsRounds: [Double]
        /// tps / full's tps in each round: the spread of the speed-up, not only its median.
        var tpsVsFullRounds: [Double]
    }

    struct Regime: Codable {
        var images: Int
        var contextTokens: Int
        var decodeTokens: Int
        var budgetMb: [Double]
        var threads: Int
        var cores: Int
        var loadAverage: Double
        var loadAverageEnd: Double
        var question: String
        var rounds: Int
        var weightProducts: String
        var batchRule = "as many sequences as fit the budget by kv_bytes at the end of decoding, decoded together"
    }

    struct Report: Codable {
        var bench = "capsule"
        var regime: Regime
        var rows: [Row]
    }

    func validate() throws {
        if images < 1 { throw ValidationError("--images must be >= 1") }
        if budgetMB.isEmpty || budgetMB.contains(where: { !($0 > 0) }) { throw ValidationError("--budget-mb: every budget must be > 0") }
        if maxBatch < 1 { throw ValidationError("--max-batch must be >= 1") }
        if decodeTokens < 1 { throw ValidationError("--decode-tokens must be >= 1") }
        if threads < 1 { throw ValidationError("--threads must be >= 1") }
        if rounds < 1 { throw ValidationError("--rounds must be >= 1") }
        for mode in modes where CapsuleAttentionMode(rawValue: mode) == nil {
            throw ValidationError("--modes: '\(mode)' is not one of \(CapsuleAttentionMode.allCases.map(\.rawValue))")
        }
    }

    func run() throws {
        let loadAverage = SystemLoad.oneMinute()
        let modelPath = model ?? Assets.smolLM2GGUF
        let vlm = try VisionLanguageModel.load(modelPath: modelPath, frontEndPath: frontEnd)
        let llama = vlm.backbone.model
        llama.threads = threads
        llama.weightProducts = weightProducts
        BLAS.threads = threads
        let fingerprint = try CacheCollector.fingerprint(modelPath: modelPath, frontEndPath: frontEnd).fingerprint
        let capsules = try adapters.map { try CapsuleAdapter.load(path: $0, config: llama.config, fingerprint: fingerprint).settings }
        let test = try EasyVQA(root: data ?? Assets.easyVQA).load(.test)
        guard test.images.count >= images else {
            throw KVCError("easy-VQA test has \(test.images.count) usable images, fewer than --images \(images)")
        }
        let workload = BenchWorkload(vlm: vlm, images: test.images, perPrompt: images, question: question,
                                     decodeTokens: decodeTokens)

        var methods: [(name: String, ratio: Double, make: () -> KVCache)] = [("full", 0, { llama.makeCache() })]
        for settings in capsules {
            for mode in modes.compactMap(CapsuleAttentionMode.init(rawValue:)) {
                var s = settings
                s.mode = mode
                var name = "capsule-\(mode.rawValue)"
                if mode == .fused && s.keyResidual != nil {
                    // The fused path evaluates the linear keys only (with the residual the cache would fall back to
                    // the dense rebuild): same work per step, without the MLP's accuracy gain.
                    s.keyResidual = nil
                    name += "-linear-keys"
                }
                methods.append((name, settings.budget.ratio, { CapsuleCache(config: llama.config, rope: llama.rope, settings: s) }))
            }
        }
        let singleMeter = Progress("kvc-bench capsule, single stream", total: methods.count, unit: "runs", enabled: !json)
        let singles = try methods.map { method -> BenchWorkload.SingleStream in
            defer { singleMeter.advance(status: "\(method.name) r=\(method.ratio)") }
            return try workload.singleStream(make: method.make)
        }
        // Batch of each method at each budget; the tokens/s of a batch does not depend on the budget, so each
        // distinct (method, batch) is decoded once per round however many budgets share it.
        let batches = budgetMB.map { budget in singles.map { min(maxBatch, Int(budget * 1e6) / max($0.kvBytes, 1)) } }
        let runs = methods.indices.map { m in Set(batches.map { $0[m] }.filter { $0 > 0 }).sorted() }
        let meter = Progress("kvc-bench capsule, budget runs", total: rounds * runs.reduce(0) { $0 + $1.count }, unit: "runs",
                             enabled: !json)
        var wall = [[Int: [Double]]](repeating: [:], count: methods.count), cpu = wall
        for _ in 0..<rounds {
            for (m, method) in methods.enumerated() {
                for batch in runs[m] {
                    let (tps, tpsCPU) = try workload.batched(count: batch, make: method.make)
                    wall[m][batch, default: []].append(tps)
                    cpu[m][batch, default: []].append(tpsCPU)
                    meter.advance(status: "\(method.name) r=\(method.ratio): batch \(batch), \(String(format: "%.1f", tps)) tok/s")
                }
            }
        }
        func ratios(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { $1 > 0 ? $0 / $1 : 0 } }
        let full = methods.firstIndex { $0.name == "full" }!
        let zeros = [Double](repeating: 0, count: rounds)
        let rows = budgetMB.indices.flatMap { b in
            methods.indices.map { m -> Row in
                let single = singles[m]
                let overhead = (single.attentionSeconds - singles[full].attentionSeconds) * 1000
                let stepMs = single.stepSeconds * 1000
                let tps = wall[m][batches[b][m]] ?? zeros, tpsCPU = cpu[m][batches[b][m]] ?? zeros
                let fullTps = wall[full][batches[b][full]] ?? zeros, fullCPU = cpu[full][batches[b][full]] ?? zeros
                return Row(method: methods[m].name, ratio: methods[m].ratio, ratioMeasured: single.visionRatio,
                           kvBytes: single.kvBytes, kvBytesFull: single.kvBytesFull, decodeTps: 1 / single.stepSeconds,
                           decodeTpsCpu: 1 / single.stepCPUSeconds,
                           stepMs: stepMs, attentionMsPerStep: single.attentionSeconds * 1000,
                           attentionCpuMsPerStep: single.attentionCPUSeconds * 1000,
                           overheadMsPerStep: overhead, overheadShare: overhead / stepMs, budgetMb: budgetMB[b],
                           batch: batches[b][m], tps: TensorBench.median(tps),
                           tpsVsFull: TensorBench.median(ratios(tps, fullTps)), tpsCpu: TensorBench.median(tpsCPU),
                           tpsCpuVsFull: TensorBench.median(ratios(tpsCPU, fullCPU)), tpsRounds: tps,
                           tpsVsFullRounds: ratios(tps, fullTps))
            }
        }
        let regime = Regime(images: images, contextTokens: workload.contextTokens, decodeTokens: decodeTokens,
                            budgetMb: budgetMB, threads: threads, cores: ProcessInfo.processInfo.activeProcessorCount,
                            loadAverage: loadAverage, loadAverageEnd: SystemLoad.oneMinute(), question: question,
                            rounds: rounds, weightProducts: llama.weightProducts.rawValue)
        try print(report: Report(regime: regime, rows: rows))
    }

    private func print(report: Report) throws {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            Swift.print(String(decoding: try encoder.encode(report), as: UTF8.self))
            return
        }
        let r = report.regime
        Swift.print(String(format: "Regime: %d easy-VQA images per prompt, %d context tokens before decoding, %d decode steps; "
                           + "budgets %@ MB; %d rounds; %d threads on %d cores, %@ weight products; load average %.2f at start, "
                           + "%.2f at the end",
                           r.images, r.contextTokens, r.decodeTokens, r.budgetMb.map { String(format: "%g", $0) }.joined(separator: ", "),
                           r.rounds, r.threads, r.cores, r.weightProducts, r.loadAverage, r.loadAverageEnd))
        Swift.print("| method | ratio (measured) | kv_bytes | vs full | single tok/s | single tok/CPU-s | step ms | attention ms/step (thread CPU) | "
                    + "overhead ms/step (share) |")
        Swift.print("|---|---|---|---|---|---|---|---|---|")
        for row in report.rows where row.budgetMb == r.budgetMb[0] {
            let ratio = row.method == "full" ? "-" : String(format: "%.1f (%.3f)", row.ratio, row.ratioMeasured ?? 0)
            Swift.print(String(format: "| %@ | %@ | %d | %.2fx smaller | %.1f | %.1f | %.2f | %.2f (%.2f) | %+.2f (%+.1f%%) |",
                               row.method, ratio, row.kvBytes, Double(row.kvBytesFull) / Double(max(row.kvBytes, 1)),
                               row.decodeTps, row.decodeTpsCpu, row.stepMs, row.attentionMsPerStep, row.attentionCpuMsPerStep,
                               row.overheadMsPerStep, 100 * row.overheadShare))
        }
        Swift.print("")
        Swift.print("| budget MB | method | batch | tok/s in budget | vs full (median) | vs full (lowest-highest round) | tok/CPU-s | vs full |")
        Swift.print("|---|---|---|---|---|---|---|---|")
        for row in report.rows {
            let spread = row.method == "full" ? "-"
                : String(format: "%.2f-%.2fx", row.tpsVsFullRounds.min() ?? 0, row.tpsVsFullRounds.max() ?? 0)
            Swift.print(String(format: "| %g | %@ | %d | %.1f | %.2fx | %@ | %.1f | %.2fx |", row.budgetMb, row.method, row.batch,
                               row.tps, row.tpsVsFull, spread, row.tpsCpu, row.tpsCpuVsFull))
        }
    }
}

/// The prompts and decoding runs of the benchmark.
private struct BenchWorkload {
    let vlm: VisionLanguageModel
    let images: EasyVQAImages
    let perPrompt: Int
    let question: String
    let decodeTokens: Int
    let warmup = 2

    /// Positions in the cache before decoding starts (prefix + question).
    var contextTokens: Int {
        vlm.prefix(imageEmbeddings: Array(repeating: [Float](repeating: 0, count: vlm.frontEnd.tokensPerImage
                                                            * vlm.backbone.model.config.hiddenSize), count: perPrompt)).length
            + vlm.suffix(question: question).positionCount
    }

    /// Sequence `index`: its images' prefix prefilled into `cache` (compressed if a capsule), then the question.
    /// Returns the logits after the question.
    func prefill(_ index: Int, into cache: KVCache) throws -> [Float] {
        let rows = (0..<perPrompt).map { (index * perPrompt + $0) % images.count }
        let embeddings = try vlm.imageEmbeddings(rows.map { images.image(row: $0) }, question: question)
        let prefilled = try vlm.prefill(imageEmbeddings: embeddings, question: question, cache: cache) { cache, prefix in
            try (cache as? CapsuleCache)?.compress(imageGridsAtPositions: prefix.grids)
        }
        return try vlm.backbone.model.forward(vlm.suffix(question: question), cache: prefilled.cache)
    }

    struct SingleStream {
        var stepSeconds: Double
        var stepCPUSeconds: Double
        var attentionSeconds: Double
        var attentionCPUSeconds: Double
        var kvBytes: Int
        var kvBytesFull: Int
        var visionRatio: Double?
    }

    /// One sequence decoded alone: seconds per step, seconds inside the cache's attention per step, bytes at the end.
    func singleStream(make: () -> KVCache) throws -> SingleStream {
        let model = vlm.backbone.model
        let cache = TimedAttentionCache(make())
        var logits = try prefill(0, into: cache.inner)
        func step() throws { logits = try model.forward(tokens: [logits.withUnsafeBufferPointer { Sampler.argmax($0) }], cache: cache) }
        for _ in 0..<warmup { try step() }
        cache.seconds = 0
        cache.cpuSeconds = 0
        let start = DispatchTime.now(), cpuStart = SystemLoad.processCPUSeconds()
        for _ in 0..<decodeTokens { try step() }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let cpuSeconds = SystemLoad.processCPUSeconds() - cpuStart
        let c = model.config
        let bytesPerPosition = c.layerCount * c.kvHeadCount * c.headDim * 2 * 2
        var result = SingleStream(stepSeconds: seconds / Double(decodeTokens),
                                  stepCPUSeconds: cpuSeconds / Double(decodeTokens), attentionSeconds: cache.seconds / Double(decodeTokens),
                                  attentionCPUSeconds: cache.cpuSeconds / Double(decodeTokens),
                                  kvBytes: (cache.inner as? PlainKVCache)?.storedBytes ?? 0,
                                  kvBytesFull: cache.length * bytesPerPosition)
        if let capsule = cache.inner as? CapsuleCache {
            result.kvBytes = capsule.textBytes + capsule.visionBytes
            result.visionRatio = 1 - Double(capsule.visionBytes) / Double(max(capsule.visionBytesFull, 1))
        }
        return result
    }

    /// `count` sequences decoded together: total tokens per wall-clock second and per CPU-second.
    func batched(count: Int, make: () -> KVCache) throws -> (wall: Double, cpu: Double) {
        let model = vlm.backbone.model
        let caches = (0..<count).map { _ in make() }
        var logits = try caches.enumerated().map { try prefill($0.offset, into: $0.element) }
        let vocab = model.config.vocabularySize
        func step() throws {
            let next = logits.map { $0.withUnsafeBufferPointer { Sampler.argmax($0) } }
            let all = try model.decodeStep(tokens: next, caches: caches)
            logits = (0..<count).map { Array(all[($0 * vocab)..<(($0 + 1) * vocab)]) }
        }
        for _ in 0..<warmup { try step() }
        let start = DispatchTime.now(), cpuStart = SystemLoad.processCPUSeconds()
        for _ in 0..<decodeTokens { try step() }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let tokens = Double(count * decodeTokens)
        return (tokens / seconds, tokens / (SystemLoad.processCPUSeconds() - cpuStart))
    }
}

/// Forwards to a cache and adds up the wall-clock time (and the calling thread's CPU time) spent in its attention:
/// the fused call when it takes it, else `withLayer` (which contains the dense rebuild and the shared kernel).
private final class TimedAttentionCache: FusedAttentionCache {
    let inner: KVCache
    var seconds = 0.0
    var cpuSeconds = 0.0

    private func timed<R>(_ body: () throws -> R) rethrows -> R {
        let start = DispatchTime.now(), cpuStart = SystemLoad.threadCPUSeconds()
        defer {
            seconds += Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
            cpuSeconds += SystemLoad.threadCPUSeconds() - cpuStart
        }
        return try body()
    }

    init(_ inner: KVCache) { self.inner = inner }

    var layerCount: Int { inner.layerCount }
    var kvHeadCount: Int { inner.kvHeadCount }
    var headDim: Int { inner.headDim }
    var length: Int { inner.length }
    var residentBytes: Int { inner.residentBytes }

    func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        inner.append(layer: layer, keys: keys, values: values, count: count)
    }

    func trim(to length: Int) { inner.trim(to: length) }

    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        try timed { try inner.withLayer(layer, body) }
    }

    func attend(layer: Int, queries: UnsafePointer<Float>, count: Int, firstPosition: Int, headCount: Int,
                output: UnsafeMutablePointer<Float>, threads: Int) -> Bool {
        guard let fused = inner as? FusedAttentionCache else { return false }
        return timed {
            fused.attend(layer: layer, queries: queries, count: count, firstPosition: firstPosition,
                         headCount: headCount, output: output, threads: threads)
        }
    }
}

/// What the machine is doing besides the benchmark, and the process's own CPU time.
enum SystemLoad {
    /// CPU seconds of this process, all threads (rates per CPU-second hold up when other processes share the cores).
    static func processCPUSeconds() -> Double { cpuSeconds(CLOCK_PROCESS_CPUTIME_ID) }

    /// CPU seconds of the calling thread.
    static func threadCPUSeconds() -> Double { cpuSeconds(CLOCK_THREAD_CPUTIME_ID) }

    private static func cpuSeconds(_ clock: clockid_t) -> Double {
        var t = timespec()
        clock_gettime(clock, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// The machine's 1-minute load average (0 where /proc is missing).
    static func oneMinute() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8),
              let first = text.split(separator: " ").first, let value = Double(first) else { return 0 }
        return value
    }
}
