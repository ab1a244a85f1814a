import KVCCollect

/// Which vision tokens keep their exact keys. Both policies work on each image's `rows x cols` grid (row-major) and
/// spread the kept tokens so every dropped token has retained grid neighbours to be rebuilt from.
public enum RetentionPolicy: String, Equatable, Sendable, CaseIterable {
    /// Ordered-dither (Bayer) lattice: keeping 50% gives the checkerboard, 25% the stride-2 lattice, and any other
    /// fraction the most evenly spread subset between those. The mask depends only on the grid, so it costs no bytes.
    case strided
    /// Keep the tokens that the question's text queries attend to most (SnapKV-like, `RetentionScores`), with coverage:
    /// the grid is cut into 2x2 cells and every cell first keeps its most attended token, so every dropped token has a
    /// retained one within one step (cells grow to 3x3, 4x4... when fewer tokens are kept than there are 2x2 cells).
    /// The rest of the budget goes to the highest scores anywhere. Costs one bit per token per layer and KV head for
    /// the mask, which comes out of the keys' budget.
    case scored

    /// Accepts "checkerboard" as the name of the strided lattice at 50%.
    public init?(name: String) {
        if name == "checkerboard" { self = .strided; return }
        self.init(rawValue: name)
    }

    /// Bytes of the keep mask per layer and KV head (structured masks are derived from the grid).
    public func maskBytes(tokens: Int) -> Int { self == .scored ? (tokens + 7) / 8 : 0 }

    /// A keep mask over the span (`true` = exact key kept) with exactly `kept` tokens kept.
    /// `scores` (one per token, larger = more attended) is required by `.scored`.
    public func mask(grids: [ImageGrid], kept: Int, scores: [Float]? = nil) -> [Bool] {
        let n = grids.reduce(0) { $0 + $1.count }
        precondition(kept >= 0 && kept <= n, "retention: cannot keep \(kept) of \(n) tokens")
        var rank = [Int](repeating: 0, count: n)      // Bayer threshold of each token within its image
        var levels = [Int](repeating: 0, count: n)    // dither cells per image, to normalise across grid sizes
        for g in grids {
            var bits = 1
            while (1 << bits) < max(g.rows, g.cols) { bits += 1 }
            for r in 0..<g.rows {
                for c in 0..<g.cols {
                    rank[g.start + r * g.cols + c] = Self.bayer(row: r, col: c, bits: bits)
                    levels[g.start + r * g.cols + c] = 1 << (2 * bits)
                }
            }
        }
        if self == .scored {
            guard let s = scores, s.count == n else {
                preconditionFailure("retention: scored policy needs one score per token (\(n)), got \(scores?.count ?? 0)")
            }
            return Self.scoredMask(grids: grids, kept: kept, scores: s)
        }
        // Sort key: fraction of the dither matrix below this token (so images of different sizes interleave fairly).
        let key = (0..<n).map { Double(rank[$0]) / Double(levels[$0]) }
        let order = (0..<n).sorted { (key[$0], $0) < (key[$1], $1) }
        var keep = [Bool](repeating: false, count: n)
        for i in order.prefix(kept) { keep[i] = true }
        return keep
    }

    /// Coverage first (the most attended token of every cell), then the highest scores; ties go to the lower index.
    static func scoredMask(grids: [ImageGrid], kept: Int, scores: [Float]) -> [Bool] {
        let n = scores.count
        var cell = 2
        func cells(_ size: Int) -> Int { grids.reduce(0) { $0 + (($1.rows + size - 1) / size) * (($1.cols + size - 1) / size) } }
        while cells(cell) > kept && cell < max(1, grids.map { max($0.rows, $0.cols) }.max() ?? 1) { cell += 1 }
        let better = { (a: Int, b: Int) in (scores[a], -a) > (scores[b], -b) }
        var keep = [Bool](repeating: false, count: n)
        var count = 0
        if cells(cell) <= kept {
            for g in grids {
                for r0 in stride(from: 0, to: g.rows, by: cell) {
                    for c0 in stride(from: 0, to: g.cols, by: cell) {
                        var best = -1
                        for r in r0..<min(r0 + cell, g.rows) {
                            for c in c0..<min(c0 + cell, g.cols) {
                                let i = g.start + r * g.cols + c
                                if best < 0 || better(i, best) { best = i }
                            }
                        }
                        keep[best] = true
                        count += 1
                    }
                }
            }
        }
        for i in (0..<n).sorted(by: better) where count < kept && !keep[i] {
            keep[i] = true
            count += 1
        }
        return keep
    }

    /// Index of (row, col) in the 2^bits x 2^bits Bayer matrix: bits of (row xor col) and row, interleaved from the
    /// least significant up, so each prefix of the order is spread as evenly as possible over the grid.
    static func bayer(row: Int, col: Int, bits: Int) -> Int {
        var v = 0
        for k in 0..<bits {
            let x = (col >> k) & 1, y = (row >> k) & 1
            v |= (((x ^ y) << 1) | y) << (2 * (bits - 1 - k))
        }
        return v
    }
}
