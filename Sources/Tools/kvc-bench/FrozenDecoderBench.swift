import ArgumentParser
import Dispatch
import Foundation
import KVCBackbone
import KVCCore
import KVCGGUF
import KVCTensor

/// Forward + backward through the frozen decoder to the input embeddings: the cost of one front-end training step.
struct FrozenDecoderBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "frozen-backward",
        abstract: "Time a forward and backward pass through the frozen SmolLM2 decoder (gradients for the input embeddings only).",
        discussion: """
        Reference (issue 5): PyTorch 2.15 on this kind of machine, 2 threads, batch 8 x 80 tokens, logits at every \
        position: about 2.3 s per step (0.28 s per sample). This benchmark computes logits only at one answer row per \
        sample, as the front-end training does.
        """)

    @Option(help: "Path to the GGUF model.") var model: String = Assets.smolLM2GGUF
    @Option(help: "Samples per batch.") var batch: Int = 8
    @Option(help: "Tokens per sample.") var tokens: Int = 80
    @Option(help: "Timed steps (after one warm-up step).") var steps: Int = 3
    @Option(help: "BLAS threads.") var threads: Int = 2
    @Flag(help: "Print JSON instead of a table.") var json = false

    func run() throws {
        BLAS.threads = threads
        let graph = try LlamaGraph(file: GGUFFile(path: Assets.require(model)))
        var rng = SeededRandom(seed: 1)
        let input = Tensor.randn([batch * tokens, graph.config.hiddenSize], std: 0.05, rng: &rng, requiresGrad: true)
        let rows = (0..<batch).map { $0 * tokens + tokens - 1 }
        let targets = (0..<batch).map { _ in rng.nextInt(below: graph.config.vocabularySize) }
        func step() -> Double {
            let start = DispatchTime.now()
            input.zeroGrad()
            let loss = crossEntropyLoss(logits: graph.logits(input: input, lengths: Array(repeating: tokens, count: batch),
                                                             logitRows: rows), targets: targets)
            loss.backward()
            return Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        }
        _ = step()
        let times = (0..<steps).map { _ in step() }.sorted()
        let median = times[times.count / 2]
        if json {
            print("{\"bench\":\"frozen-backward\",\"batch\":\(batch),\"tokens\":\(tokens),\"threads\":\(threads),"
                  + "\"seconds_per_step\":\(median),\"seconds_per_sample\":\(median / Double(batch)),"
                  + "\"reference_pytorch_seconds_per_step\":2.3}")
        } else {
            print("frozen decoder forward+backward to input embeddings, batch \(batch) x \(tokens) tokens, \(threads) threads")
            print("| implementation | s/step | s/sample |")
            print("|---|---|---|")
            print(String(format: "| KVCapsule-Swift (LlamaGraph) | %.3f | %.3f |", median, median / Double(batch)))
            print("| PyTorch 2.15 (issue 5 anchor, logits at all positions) | 2.3 | 0.28 |")
        }
    }
}
