import ArgumentParser
import Foundation
import KVCCore
import KVCTensor

/// `kvc-bench train-step`: one training step of the capsule-sized MLP in KVCTensor, side by side with the same step
/// in numpy and PyTorch (scripts/reference/mlp_step.py) run by this command.
struct TrainStepBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-step",
        abstract: "One MLP training step (512 → 1024 ReLU → 64, batch 1024, MSE, AdamW) vs numpy and PyTorch.",
        discussion: """
        The step is forward, MSE loss, backward and an AdamW update; the input needs no gradient. Per step: \
        forward 2·B·(512·1024 + 1024·64) FLOP, backward twice that minus the input gradient that is not needed, \
        ≈ 2.55 GFLOP actually computed (3.6 GFLOP if the input gradient were computed too). \
        The reference script runs numpy (hand-written backward) and PyTorch (if importable) with the same thread \
        count; numpy is run with OPENBLAS_CORETYPE as set in the environment and, if it is set, also without it. \
        Figures are best and median milliseconds per step; on a busy machine compare the best.
        """)

    @Option(help: "Batch size.") var batch: Int = 1024
    @Option(help: "Timed steps per implementation.") var steps: Int = 30
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 5
    @Option(help: "BLAS / PyTorch threads.") var threads: Int = 2
    @Option(help: "Python interpreter for the reference.") var python: String = "python3"
    @Option(help: "Path of mlp_step.py (default: scripts/reference/mlp_step.py under the working directory or the package).")
    var script: String?
    @Option(help: "Rounds of the whole comparison; each row reports its best round.") var rounds: Int = 2
    @Flag(help: "Skip the Python reference.") var noReference = false
    @Flag(help: "When OPENBLAS_CORETYPE is set, do not also time KVCTensor with it unset (in a child process).")
    var noCoretypeVariant = false
    @Flag(help: "Print JSON instead of a table.") var json = false

    static let (inputSize, hiddenSize, outputSize) = (512, 1024, 64)

    struct Timing: Codable {
        let name: String
        let bestMs: Double, medianMs: Double
        let lossFirst: Double?, lossLast: Double?
        let note: String
    }

    struct Report: Codable {
        let benchmark: String
        let batch: Int, threads: Int
        let gflopPerStep: Double
        let openblasCoretype: String?
        let results: [Timing]
        let referenceError: String?
    }

    func run() throws {
        guard batch >= 1, steps >= 1, warmup >= 0, threads >= 1, rounds >= 1 else {
            throw ValidationError("--batch, --steps, --threads and --rounds must be ≥ 1, --warmup ≥ 0")
        }
        BLAS.threads = threads
        let coretype = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"]
        var results: [Timing] = []
        var referenceError: String?
        // Rounds alternate the implementations so that a busy spell on a shared machine does not land on one only.
        for _ in 0..<rounds {
            var round = [swiftTiming(), gemmFloorTiming()]
            if coretype != nil && !noCoretypeVariant {
                do { round.append(try unsetCoretypeTiming()) } catch { referenceError = "\(error)" }
            }
            if !noReference {
                do { round += try referenceTimings() } catch { referenceError = "\(error)" }
            }
            results = merge(results, round)
        }
        let (i, h, o) = (Double(Self.inputSize), Double(Self.hiddenSize), Double(Self.outputSize))
        let gflop = 2 * Double(batch) * (i * h + h * o) * 3 / 1e9 - 2 * Double(batch) * i * h / 1e9
        let report = Report(benchmark: "train-step", batch: batch, threads: threads, gflopPerStep: gflop,
                            openblasCoretype: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"],
                            results: results, referenceError: referenceError)
        if json { TensorBench.printJSON(report); return }

        print("MLP training step: \(Self.inputSize) → \(Self.hiddenSize) ReLU → \(Self.outputSize), batch \(batch), "
              + "MSE, AdamW; \(threads) threads; \(String(format: "%.2f", gflop)) GFLOP computed per step")
        let swiftBest = results[0].bestMs
        let f2: (Double?) -> String = { $0.map { String(format: "%.4f", $0) } ?? "-" }
        TensorBench.printTable(
            header: ["implementation", "best", "median", "GFLOP/s (best)", "time ÷ KVCTensor (best)", "loss first", "loss last"],
            rows: results.map { r in
                [r.name, TensorBench.ms(r.bestMs), TensorBench.ms(r.medianMs), String(format: "%.1f", gflop / r.bestMs * 1e3),
                 String(format: "%.2fx", r.bestMs / swiftBest), f2(r.lossFirst), f2(r.lossLast)]
            })
        for r in results where !r.note.isEmpty { print("  \(r.name): \(r.note)") }
        if let referenceError { print("reference not run: \(referenceError)") }
    }

    /// The step in KVCTensor, exactly as a trainer writes it. The note splits the median step into its phases.
    private func swiftTiming() -> Timing {
        var rng = SeededRandom(seed: 0)
        let model = MLP(sizes: [Self.inputSize, Self.hiddenSize, Self.outputSize], activation: .relu, rng: &rng)
        let optimizer = AdamW(parameters: model.parameters, learningRate: 1e-3, weightDecay: 0.01)
        let x = Tensor.randn([batch, Self.inputSize], rng: &rng)
        let target = Tensor.randn([batch, Self.outputSize], rng: &rng)
        var losses: [Float] = []
        var phases: [[Double]] = [[], [], []]
        func step() {
            var loss: Tensor!
            let tForward = TensorBench.time {
                optimizer.zeroGrad()
                loss = mseLoss(model(x), target)
            }
            let tBackward = TensorBench.time { loss.backward() }
            let tUpdate = TensorBench.time { optimizer.step() }
            phases[0].append(tForward); phases[1].append(tBackward); phases[2].append(tUpdate)
            losses.append(loss.item)
        }
        for _ in 0..<warmup { step() }
        phases = [[], [], []]
        let times = (0..<steps).map { _ in TensorBench.time(step) }
        let m = phases.map { TensorBench.median($0) * 1e3 }
        return Timing(name: "KVCTensor (Swift)", bestMs: times.min()! * 1e3, medianMs: TensorBench.median(times) * 1e3,
                      lossFirst: Double(losses.first!), lossLast: Double(losses.last!),
                      note: String(format: "median phases: forward+loss %.2f ms, backward %.2f ms, AdamW %.2f ms", m[0], m[1], m[2]))
    }

    /// The floor: the step's five GEMMs called directly on preallocated buffers, nothing else.
    private func gemmFloorTiming() -> Timing {
        let (b, i, h, o) = (batch, Self.inputSize, Self.hiddenSize, Self.outputSize)
        var rng = SeededRandom(seed: 1)
        let x = Tensor.randn([b, i], rng: &rng), w1 = Tensor.randn([h, i], rng: &rng), w2 = Tensor.randn([o, h], rng: &rng)
        let hidden = Tensor.zeros([b, h]), y = Tensor.zeros([b, o]), gy = Tensor.randn([b, o], rng: &rng)
        let gw1 = Tensor.zeros([h, i]), gw2 = Tensor.zeros([o, h]), gh = Tensor.zeros([b, h])
        let calls: [(String, Double, () -> Void)] = [
            ("x·W1ᵀ", 2.0 * Double(b * h * i), { BLAS.gemm(transB: true, m: b, n: h, k: i, a: x.data, b: w1.data, c: hidden.data) }),
            ("h·W2ᵀ", 2.0 * Double(b * o * h), { BLAS.gemm(transB: true, m: b, n: o, k: h, a: hidden.data, b: w2.data, c: y.data) }),
            ("dW2 = gᵀ·h", 2.0 * Double(o * h * b), { BLAS.gemm(transA: true, m: o, n: h, k: b, a: gy.data, b: hidden.data, c: gw2.data) }),
            ("dh = g·W2", 2.0 * Double(b * h * o), { BLAS.gemm(m: b, n: h, k: o, a: gy.data, b: w2.data, c: gh.data) }),
            ("dW1 = dhᵀ·x", 2.0 * Double(h * i * b), { BLAS.gemm(transA: true, m: h, n: i, k: b, a: gh.data, b: x.data, c: gw1.data) }),
        ]
        var perCall = [[Double]](repeating: [], count: calls.count)
        func gemms() {
            for (k, call) in calls.enumerated() { perCall[k].append(TensorBench.time(call.2)) }
        }
        for _ in 0..<warmup { gemms() }
        perCall = perCall.map { _ in [] }
        let times = (0..<steps).map { _ in TensorBench.time(gemms) }
        let detail = calls.enumerated().map { k, call in
            let best = perCall[k].min()!
            return String(format: "%@ %.2f ms (%.0f GFLOP/s)", call.0, best * 1e3, call.1 / best / 1e9)
        }.joined(separator: ", ")
        return Timing(name: "GEMMs only (floor)", bestMs: times.min()! * 1e3, medianMs: TensorBench.median(times) * 1e3,
                      lossFirst: nil, lossLast: nil,
                      note: "the step's five cblas_sgemm calls on preallocated buffers; best of each: " + detail)
    }

    /// Per row, the best of the rounds: fastest step, lowest round median.
    private func merge(_ a: [Timing], _ b: [Timing]) -> [Timing] {
        if a.isEmpty { return b }
        return a.map { old in
            guard let new = b.first(where: { $0.name == old.name }) else { return old }
            let better = new.bestMs < old.bestMs || old.bestMs.isNaN
            return Timing(name: old.name, bestMs: better ? new.bestMs : old.bestMs,
                          medianMs: old.medianMs.isNaN ? new.medianMs : Swift.min(old.medianMs, new.medianMs.isNaN ? .infinity : new.medianMs),
                          lossFirst: old.lossFirst, lossLast: old.lossLast, note: better ? new.note : old.note)
        } + b.filter { n in !a.contains { $0.name == n.name } }
    }

    /// KVCTensor again in a child process of this executable with OPENBLAS_CORETYPE removed, so OpenBLAS picks its
    /// kernels for the CPU itself (OpenBLAS reads the variable once, when it loads).
    private func unsetCoretypeTiming() throws -> Timing {
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        proc.arguments = ["train-step", "--json", "--no-reference", "--rounds", "1", "--batch", "\(batch)",
                          "--steps", "\(steps)", "--warmup", "\(warmup)", "--threads", "\(threads)"]
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = nil
        env["OPENBLAS_VERBOSE"] = "2"  // OpenBLAS then prints the core it chose ("Core: ...")
        proc.environment = env
        let stdout = Pipe(), stderr = Pipe()
        proc.standardOutput = stdout
        proc.standardError = stderr
        try proc.run()
        let text = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errText = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        proc.waitUntilExit()
        let core = (text + "\n" + errText).split(separator: "\n").first { $0.hasPrefix("Core: ") }
            .map { String($0.dropFirst(6)) } ?? "?"
        guard proc.terminationStatus == 0, let start = text.firstIndex(of: "{"),
              let report = try? JSONDecoder().decode(Report.self, from: Data(text[start...].utf8)),
              let row = report.results.first else {
            throw KVCError("child run without OPENBLAS_CORETYPE failed (status \(proc.terminationStatus)): \(text.prefix(300))")
        }
        return Timing(name: "KVCTensor, CORETYPE unset", bestMs: row.bestMs, medianMs: row.medianMs,
                      lossFirst: row.lossFirst, lossLast: row.lossLast,
                      note: "OpenBLAS chose core \(core) for this CPU; " + row.note)
    }

    private func scriptPath() throws -> String {
        let candidates: [String?] = [script,
                          FileManager.default.currentDirectoryPath + "/scripts/reference/mlp_step.py",
                          URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                              .appendingPathComponent("../../../scripts/reference/mlp_step.py").standardized.path]
        for case let c? in candidates where FileManager.default.fileExists(atPath: c) { return c }
        throw KVCError("mlp_step.py not found (looked at \(candidates.compactMap { $0 })); pass --script")
    }

    private func referenceTimings() throws -> [Timing] {
        let path = try scriptPath()
        let coretype = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"]
        var out: [Timing] = []
        let first = try runReference(path, unsetCoretype: false, skipTorch: false)
        let envNote = coretype.map { "OPENBLAS_CORETYPE=\($0)" } ?? "OPENBLAS_CORETYPE unset"
        out.append(timing("numpy", first["numpy"], note: envNote + (first["numpy_version"].map { ", numpy \($0)" } ?? "")))
        if coretype != nil {
            let second = try runReference(path, unsetCoretype: true, skipTorch: true)
            out.append(timing("numpy (no CORETYPE)", second["numpy"], note: "OPENBLAS_CORETYPE unset: OpenBLAS picks its kernel"))
        }
        if let torch = first["torch"] as? [String: Any] {
            out.append(timing("PyTorch", torch, note: (first["torch_version"].map { "torch \($0), " } ?? "")
                              + "torch.set_num_threads(\(threads)), default AdamW (per-tensor loop on CPU)"))
            if let fused = first["torch_fused_adamw"] as? [String: Any] {
                out.append(timing("PyTorch fused AdamW", fused, note: "torch.optim.AdamW(fused=True)"))
            }
        } else {
            out.append(Timing(name: "PyTorch", bestMs: .nan, medianMs: .nan, lossFirst: nil, lossLast: nil,
                              note: "not importable by \(python) (pip install /opt/wheels/torch-*.whl)"))
        }
        return out.filter { !$0.bestMs.isNaN || $0.name == "PyTorch" }
    }

    private func timing(_ name: String, _ any: Any?, note: String) -> Timing {
        guard let d = any as? [String: Any], let best = d["min_ms"] as? Double, let med = d["median_ms"] as? Double else {
            return Timing(name: name, bestMs: .nan, medianMs: .nan, lossFirst: nil, lossLast: nil, note: "no result")
        }
        return Timing(name: name, bestMs: best, medianMs: med, lossFirst: d["loss_first"] as? Double,
                      lossLast: d["loss_last"] as? Double, note: note)
    }

    private func runReference(_ path: String, unsetCoretype: Bool, skipTorch: Bool) throws -> [String: Any] {
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var args = [python, path, "--batch", "\(batch)", "--steps", "\(steps)", "--warmup", "\(warmup)",
                    "--threads", "\(threads)"]
        if skipTorch { args.append("--skip-torch") }
        proc.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "\(threads)"
        env["OMP_NUM_THREADS"] = "\(threads)"
        if unsetCoretype { env["OPENBLAS_CORETYPE"] = nil }
        proc.environment = env
        let stdout = Pipe(), stderr = Pipe()
        proc.standardOutput = stdout
        proc.standardError = stderr
        try proc.run()
        let data = stdout.fileHandleForReading.readDataToEndOfFile()
        let errText = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        proc.waitUntilExit()
        guard proc.terminationStatus == 0 else {
            throw KVCError("\(path) exited with status \(proc.terminationStatus): \(errText.suffix(500))")
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw KVCError("\(path) printed no JSON object: \(String(decoding: data, as: UTF8.self).prefix(300))")
        }
        return obj
    }
}
