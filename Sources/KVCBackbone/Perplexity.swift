import KVCCore

/// Perplexity the way llama.cpp's `llama-perplexity` computes it: the token sequence is cut into non-overlapping
/// windows of `context` tokens (a trailing partial window is dropped), each window is evaluated from an empty cache,
/// and only the second half is scored: the logits at window positions `context/2 ..< context-1` predict the next
/// token. No BOS is inserted, because this model's `tokenizer.ggml.add_bos_token` is false (llama.cpp replaces
/// the first token of each window with BOS only when that flag is set).
public enum Perplexity {
    public struct Result: Sendable, Codable {
        public var perplexity: Double
        public var meanNegativeLogLikelihood: Double
        public var scoredTokens: Int
        public var windows: Int
        public var context: Int
        public var totalTokens: Int
        public var seconds: Double
    }

    /// - Throws: `KVCError` when the text is shorter than two windows (llama.cpp's requirement) or `context`
    ///   is outside 4...contextLength.
    public static func evaluate(model: LlamaModel, tokens: [Int], context: Int, cachePrecision: PlainKVCache.Precision = .float16,
                                progress: Bool = false) throws -> Result {
        guard context >= 4, context <= model.config.contextLength else {
            throw KVCError("--context \(context) must be between 4 and the model's context length \(model.config.contextLength)")
        }
        guard tokens.count >= 2 * context else {
            throw KVCError("perplexity needs at least \(2 * context) tokens for a context of \(context); the text has \(tokens.count)")
        }
        let windows = tokens.count / context
        let first = context / 2
        let scoredRows = context - 1 - first
        let vocab = model.config.vocabularySize
        let start = DispatchTime.now()
        let bar = Progress("perplexity", total: windows, unit: "windows", enabled: progress)
        var nll = 0.0
        var count = 0
        for w in 0..<windows {
            let window = Array(tokens[(w * context)..<((w + 1) * context)])
            // Logits of rows first ..< context-1: the last `context - first` rows minus the final one.
            let logits = try model.forward(tokens: window, cache: model.makeCache(precision: cachePrecision, initialCapacity: context),
                                           logits: .lastRows(context - first))
            logits.withUnsafeBufferPointer { all in
                for r in 0..<scoredRows {
                    let row = UnsafeBufferPointer(rebasing: all[(r * vocab)..<((r + 1) * vocab)])
                    nll -= logSoftmax(row, at: window[first + r + 1])
                    count += 1
                }
            }
            bar.advance(status: String(format: "ppl %.4f", exp(nll / Double(count))))
        }
        let mean = nll / Double(count)
        return Result(perplexity: exp(mean), meanNegativeLogLikelihood: mean, scoredTokens: count, windows: windows,
                      context: context, totalTokens: tokens.count, seconds: seconds(start, DispatchTime.now()))
    }

    /// log softmax(row)[index], accumulated in double.
    static func logSoftmax(_ row: UnsafeBufferPointer<Float>, at index: Int) -> Double {
        var m = -Float.infinity
        for v in row { m = max(m, v) }
        var total = 0.0
        for v in row { total += Double(expf(v - m)) }
        return Double(row[index] - m) - log(total)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
