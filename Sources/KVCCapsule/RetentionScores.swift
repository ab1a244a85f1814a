import Foundation

/// How much attention each vision token receives from the question, for `RetentionPolicy.scored` (SnapKV-like).
///
/// For one layer and KV head: every query head of the KV head's group and every observed query row (the question's
/// tokens, which follow the image tokens in the same user turn) gives a softmax over the span's keys; the score of a
/// token is the sum of its probabilities over those rows and heads (pooling over the group, because the heads of a
/// group share the one key that is kept or rebuilt). The softmax runs over the vision keys only, so every row counts
/// once whatever attention it gives the text. The same function scores the collected caches in training (their text
/// queries) and the live question queries at inference, so the retained sets the reconstructor is fitted on and the
/// ones it serves come from the same rule.
public enum RetentionScores {
    /// - Parameters:
    ///   - queries: `rows` query vectors (rotated), `query(row, head)` the start of row `row` of query head `head` of the
    ///     group (`group` heads).
    ///   - keys: the span's rotated keys `[n, headDim]` of this KV head.
    /// - Returns: one score per token, summing to `rows * group`.
    public static func pooled(rows: Int, group: Int, query: (_ row: Int, _ head: Int) -> UnsafePointer<Float>,
                              keys: UnsafePointer<Float>, tokens n: Int, headDim d: Int) -> [Float] {
        var total = [Double](repeating: 0, count: n)
        var logits = [Double](repeating: 0, count: n)
        let scale = 1 / Double(d).squareRoot()
        for g in 0..<group {
            for i in 0..<rows {
                let q = query(i, g)
                var top = -Double.infinity
                for j in 0..<n {
                    var dot: Float = 0
                    let k = keys + j * d
                    for e in 0..<d { dot += q[e] * k[e] }
                    logits[j] = Double(dot) * scale
                    top = max(top, logits[j])
                }
                var sum = 0.0
                for j in 0..<n { logits[j] = exp(logits[j] - top); sum += logits[j] }
                for j in 0..<n { total[j] += logits[j] / sum }
            }
        }
        return total.map { Float($0) }
    }
}
