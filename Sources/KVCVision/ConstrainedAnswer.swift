import KVCCore
import KVCTokenizer

/// Picks the answer among a closed label set from the next-token logits where the answer starts: each label scores
/// the best logit among the first tokens of its spellings ("yes", "Yes") that begin no other label.
///
/// Why: a free-running blind model answers "The shape is ..." and scores 0%, which says nothing about the language
/// prior. Constrained to the 13 easy-VQA answers, the blind baseline measures what the question alone gives away
/// (mostly the yes/no prior), and the same scorer on the full cache shows how much accuracy comes from the image.
public struct ConstrainedAnswer: Sendable {
    public let labels: [String]
    /// Candidate first-token ids per label.
    let firstTokens: [[Int]]

    public init(labels: [String], tokenizer: BPETokenizer) throws {
        guard !labels.isEmpty else { throw KVCError("constrained answers need at least one label") }
        self.labels = labels
        let candidates = labels.map { label -> [Int] in
            let spellings = [label.lowercased(), label.prefix(1).uppercased() + label.dropFirst().lowercased()]
            var ids: [Int] = []
            for s in spellings { if let first = tokenizer.encode(s).first, !ids.contains(first) { ids.append(first) } }
            return ids
        }
        // A first token that begins two labels says nothing about which one follows: only unshared tokens count.
        var owners: [Int: Int] = [:]
        for ids in candidates { for id in ids { owners[id, default: 0] += 1 } }
        firstTokens = candidates.map { $0.filter { owners[$0] == 1 } }
        if let i = firstTokens.firstIndex(where: \.isEmpty) {
            throw KVCError("label '\(labels[i])' shares its first token with another label; "
                           + "one-step constrained answers cannot tell them apart")
        }
    }

    /// The label whose best first-token logit is highest (ties: the earlier label).
    public func choose(logits: [Float]) -> String {
        var best = 0, bestScore = -Float.infinity
        for (i, ids) in firstTokens.enumerated() {
            let score = ids.lazy.filter { $0 < logits.count }.map { logits[$0] }.max() ?? -Float.infinity
            if score > bestScore { best = i; bestScore = score }
        }
        return labels[best]
    }
}
