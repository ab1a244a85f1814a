import Dispatch
import Foundation
import KVCBackbone
import KVCCore

/// `kvc-bench decode --batch B...`: several sequences decoded together (`LlamaModel.decodeStep`, one token each per
/// step), the regime of serving many sequences from one KV memory budget. Measures how a step's cost grows with the
/// batch: a weight product reads each block once for the whole tile of sequences, attention is per sequence.
struct BatchedDecodeBench {
    let model: LlamaModel
    /// Tokens in each sequence's cache before the timed steps (each sequence has its own prompt).
    let context: Int
    let decodeTokens: Int
    let repeats: Int

    struct Row: Codable {
        var threads: Int
        var weightProducts: String
        var batch: Int
        var stepMs: Double
        /// Tokens of all sequences per wall-clock second.
        var tokensPerSecond: Double
        /// Tokens of all sequences per second of process CPU time.
        var tokensPerCPUSecond: Double
    }

    /// Rows for each batch size at the model's current thread count. The caches are prefilled once (untimed) and
    /// trimmed back to the context before every run; the best of `repeats` runs after one warm-up is kept.
    func measure(batches: [Int]) throws -> [Row] {
        var rng = SeededRandom(seed: 7)
        let caches = try (0..<(batches.max() ?? 1)).map { _ -> PlainKVCache in
            let cache = model.makeCache(initialCapacity: context + decodeTokens)
            _ = try model.forward(tokens: (0..<context).map { _ in 1000 + rng.nextInt(below: 20_000) }, cache: cache)
            return cache
        }
        return try batches.map { batch in
            let members = Array(caches.prefix(batch))
            var best = (wall: Double.infinity, cpu: Double.infinity)
            for run in 0...repeats {
                members.forEach { $0.trim(to: context) }
                var tokens = (0..<batch).map { 1000 + $0 }
                let start = DispatchTime.now(), cpuStart = SystemLoad.processCPUSeconds()
                for _ in 0..<decodeTokens {
                    let logits = try model.decodeStep(tokens: tokens, caches: members)
                    tokens = Self.greedy(logits, rows: batch)
                }
                guard run > 0 else { continue }
                best.wall = min(best.wall, Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9)
                best.cpu = min(best.cpu, SystemLoad.processCPUSeconds() - cpuStart)
            }
            let generated = Double(batch * decodeTokens)
            return Row(threads: model.threads, weightProducts: model.weightProducts.rawValue, batch: batch, stepMs: 1000 * best.wall / Double(decodeTokens),
                       tokensPerSecond: generated / best.wall, tokensPerCPUSecond: generated / best.cpu)
        }
    }

    /// Each row's most likely next token.
    private static func greedy(_ logits: [Float], rows: Int) -> [Int] {
        let vocab = logits.count / rows
        return logits.withUnsafeBufferPointer { all in
            (0..<rows).map { Sampler.argmax(UnsafeBufferPointer(rebasing: all[($0 * vocab)..<(($0 + 1) * vocab)])) }
        }
    }

    /// A table with the batch sizes side by side, one line per thread count.
    static func printTable(_ rows: [Row]) {
        let batches = Array(Set(rows.map(\.batch))).sorted()
        print("| weight products | threads | rate | " + batches.map { "batch \($0)" }.joined(separator: " | ") + " |")
        print("|---|---|---|" + String(repeating: "---|", count: batches.count))
        var groups: [(products: String, threads: Int)] = []
        for row in rows where !groups.contains(where: { $0 == (row.weightProducts, row.threads) }) {
            groups.append((row.weightProducts, row.threads))
        }
        for (products, threads) in groups {
            let mine = rows.filter { $0.threads == threads && $0.weightProducts == products }
            func line(_ name: String, _ value: (Row) -> Double, _ format: String) {
                let cells = batches.map { b in mine.first { $0.batch == b }.map { String(format: format, value($0)) } ?? "-" }
                print("| \(products) | \(threads) | \(name) | " + cells.joined(separator: " | ") + " |")
            }
            line("tok/s", \.tokensPerSecond, "%.1f")
            line("tok/CPU-s", \.tokensPerCPUSecond, "%.1f")
            line("ms/step", \.stepMs, "%.2f")
        }
    }
}
