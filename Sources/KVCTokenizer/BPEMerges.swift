import KVCCore

/// The merge table of a byte-level BPE vocabulary, keyed by token ids, and the merge loop.
///
/// A word starts as one token per byte; the adjacent pair with the lowest merge rank is merged, leftmost
/// first among equal ranks, until no adjacent pair has a merge. (This is what llama.cpp and Hugging Face
/// `tokenizers` do; working on ids instead of strings is equivalent because token strings are unique.)
struct BPEMerges {
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    private var table: [UInt64: UInt64] = [:]

    /// - Parameter tokenIdForText: the vocabulary lookup.
    init(merges: [String], tokenIdForText: [String: Int]) throws {
        table.reserveCapacity(merges.count)
        for (rank, merge) in merges.enumerated() {
            // Byte-level token strings never contain a space (it is written "Ġ"), so the first space after the
            // first character separates the pair.
            let scalars = merge.unicodeScalars
            guard let separator = scalars.dropFirst().firstIndex(of: " ") else {
                throw KVCError("tokenizer.ggml.merges[\(rank)]: \"\(merge)\" is not two tokens separated by a space")
            }
            let left = String(scalars[..<separator])
            let right = String(scalars[scalars.index(after: separator)...])
            guard let leftId = tokenIdForText[left], let rightId = tokenIdForText[right],
                  let mergedId = tokenIdForText[left + right] else {
                throw KVCError("tokenizer.ggml.merges[\(rank)]: \"\(merge)\" names a token that is not in "
                    + "tokenizer.ggml.tokens (\"\(left)\", \"\(right)\" or their concatenation)")
            }
            let key = Self.key(leftId, rightId)
            // A repeated pair keeps its first (best) rank.
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(mergedId) }
        }
    }

    @inline(__always) private static func key(_ left: Int, _ right: Int) -> UInt64 {
        UInt64(truncatingIfNeeded: left) << 32 | UInt64(truncatingIfNeeded: right)
    }

    /// The rank and result of merging two adjacent tokens, if the pair has a merge.
    @inline(__always) func merge(_ left: Int32, _ right: Int32) -> (rank: UInt32, merged: Int32)? {
        guard let entry = table[Self.key(Int(left), Int(right))] else { return nil }
        return (UInt32(entry >> 32), Int32(truncatingIfNeeded: entry & 0xFFFF_FFFF))
    }

    /// Applies the merges to a word given as its initial tokens (one per byte) and appends the result to `out`.
    ///
    /// Short words (nearly all) are merged by rescanning the pairs, which beats any bookkeeping at these sizes;
    /// long words (whitespace runs, long identifiers, base64) use a heap so the cost stays n log n.
    func apply(to symbols: inout [Int32], appendingTo out: inout [Int]) {
        if symbols.count <= 32 {
            applyByRescanning(&symbols)
            for id in symbols { out.append(Int(id)) }
        } else {
            applyWithHeap(&symbols, appendingTo: &out)
        }
    }

    func applyByRescanning(_ symbols: inout [Int32]) {
        while symbols.count > 1 {
            var bestRank = UInt32.max, bestIndex = -1, bestMerged: Int32 = 0
            for i in 0..<(symbols.count - 1) {
                if let (rank, merged) = merge(symbols[i], symbols[i + 1]), rank < bestRank {
                    bestRank = rank; bestIndex = i; bestMerged = merged
                }
            }
            guard bestIndex >= 0 else { return }
            symbols[bestIndex] = bestMerged
            symbols.remove(at: bestIndex + 1)
        }
    }

    /// Symbols form a linked list; the heap holds (rank << 32 | left position) of candidate merges. An entry is
    /// stale once either side has changed, which is detected by looking the pair up again: merge ranks are
    /// unique per pair, so an unchanged rank means an unchanged pair.
    func applyWithHeap(_ symbols: inout [Int32], appendingTo out: inout [Int]) {
        let n = symbols.count
        var next = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0..<n { buffer[i] = Int32(i + 1) }
            count = n
        }
        next[n - 1] = -1
        var previous = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0..<n { buffer[i] = Int32(i - 1) }
            count = n
        }
        var alive = [Bool](repeating: true, count: n)
        var heap = MinHeap()
        heap.reserve(n)
        for i in 0..<(n - 1) {
            if let (rank, _) = merge(symbols[i], symbols[i + 1]) { heap.push(UInt64(rank) << 32 | UInt64(i)) }
        }
        while let top = heap.pop() {
            let rank = UInt32(top >> 32), left = Int(top & 0xFFFF_FFFF)
            guard alive[left], next[left] >= 0 else { continue }
            let right = Int(next[left])
            guard let (currentRank, merged) = merge(symbols[left], symbols[right]), currentRank == rank else { continue }
            symbols[left] = merged
            alive[right] = false
            next[left] = next[right]
            if next[right] >= 0 { previous[Int(next[right])] = Int32(left) }
            if previous[left] >= 0, let (r, _) = merge(symbols[Int(previous[left])], merged) {
                heap.push(UInt64(r) << 32 | UInt64(previous[left]))
            }
            if next[left] >= 0, let (r, _) = merge(merged, symbols[Int(next[left])]) {
                heap.push(UInt64(r) << 32 | UInt64(left))
            }
        }
        var i = 0
        while i >= 0 { out.append(Int(symbols[i])); i = Int(next[i]) }
    }
}

/// A binary min-heap of UInt64 keys.
private struct MinHeap {
    private var items: [UInt64] = []

    mutating func reserve(_ n: Int) { items.reserveCapacity(n) }

    mutating func push(_ item: UInt64) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent] <= items[child] { break }
            items.swapAt(parent, child)
            child = parent
        }
    }

    mutating func pop() -> UInt64? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < items.count && items[left] < items[smallest] { smallest = left }
                if right < items.count && items[right] < items[smallest] { smallest = right }
                if smallest == parent { break }
                items.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }
}
