import KVCBackbone
import KVCCollect

/// For every dropped token, its nearest retained tokens in the same image: the inputs its key is rebuilt from.
///
/// Neighbours are ordered by grid distance, then by a fixed scan order of offsets, so the same mask always gives the
/// same slots. A token's *configuration* is the list of its neighbours' offsets `(dRow, dCol)`; reconstructors are fitted
/// per configuration and slot, which keeps the linear form exact about which neighbour sits where.
public struct GridNeighbours: Sendable {
    public struct Offset: Hashable, Codable, Sendable, Comparable {
        public var dRow: Int
        public var dCol: Int
        public static func < (a: Offset, b: Offset) -> Bool { (a.dRow, a.dCol) < (b.dRow, b.dCol) }
    }

    /// Indices into the span of the dropped tokens, ascending.
    public let dropped: [Int]
    /// Indices into the span of the retained tokens, ascending (the order the compressed store keeps them in).
    public let retained: [Int]
    /// For dropped token t (index into `dropped`), its neighbours as indices into `retained`, nearest first.
    public let neighbours: [[Int]]
    /// Their grid offsets relative to the dropped token.
    public let offsets: [[Offset]]

    /// - Parameters:
    ///   - keep: the retention mask over the span.
    ///   - count: how many neighbours to use (fewer near borders or for sparse masks within `radius`).
    ///   - radius: largest |dRow| or |dCol| searched.
    public init(grids: [ImageGrid], keep: [Bool], count: Int, radius: Int = 2) {
        let n = keep.count
        var retainedIndex = [Int](repeating: -1, count: n)
        var retained: [Int] = []
        for i in 0..<n where keep[i] { retainedIndex[i] = retained.count; retained.append(i) }
        // Offsets by distance, then row, then column: deterministic slot order.
        var searchOrder: [Offset] = []
        for dr in -radius...radius { for dc in -radius...radius where dr != 0 || dc != 0 { searchOrder.append(Offset(dRow: dr, dCol: dc)) } }
        searchOrder.sort { ($0.dRow * $0.dRow + $0.dCol * $0.dCol, $0) < ($1.dRow * $1.dRow + $1.dCol * $1.dCol, $1) }
        var dropped: [Int] = [], neighbours: [[Int]] = [], offsets: [[Offset]] = []
        for g in grids {
            for r in 0..<g.rows {
                for c in 0..<g.cols where !keep[g.start + r * g.cols + c] {
                    var nb: [Int] = [], off: [Offset] = []
                    for o in searchOrder {
                        let rr = r + o.dRow, cc = c + o.dCol
                        guard rr >= 0, rr < g.rows, cc >= 0, cc < g.cols else { continue }
                        let j = g.start + rr * g.cols + cc
                        if keep[j] { nb.append(retainedIndex[j]); off.append(o) }
                        if nb.count == count { break }
                    }
                    dropped.append(g.start + r * g.cols + c)
                    neighbours.append(nb)
                    offsets.append(off)
                }
            }
        }
        self.dropped = dropped
        self.retained = retained
        self.neighbours = neighbours
        self.offsets = offsets
    }
}

extension GridNeighbours {
    /// The nearest-neighbour baseline: each dropped key is its nearest retained neighbour's key, re-rotated by the
    /// position offset to the dropped token's position. `retainedKeys` is `[retained, headDim]` (rotated);
    /// returns `[dropped, headDim]` (zeros for a token without neighbours).
    public func nearestCopy(retainedKeys: [Float], positions: [Int32], rope: RotaryEmbedding) -> [Float] {
        let d = rope.headDim
        var out = [Float](repeating: 0, count: dropped.count * d)
        for (t, j) in dropped.enumerated() {
            guard let first = neighbours[t].first else { continue }
            let delta = Int(positions[j]) - Int(positions[retained[first]])
            let rotated = rope.rotate(Array(retainedKeys[(first * d)..<((first + 1) * d)]), position: delta)
            for e in 0..<d { out[t * d + e] = rotated[e] }
        }
        return out
    }
}
