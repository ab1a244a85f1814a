import Foundation
import KVCBackbone

/// Rebuilds a dropped key from its retained grid neighbours with a map that commutes with the rotary embedding.
///
/// In the de-rotated frame a dropped key is predicted as `k'_j = Σ_m A_m k'_{n_m}`, where each `A_m` multiplies the
/// i-th RoPE pair (a complex number) by a learned complex coefficient `a_{m,i}`. Such maps commute with rotations, so in
/// the cached (rotated) frame the prediction is `k_j = Σ_m (a_m · e^{-iδ_m θ}) ⊙ k_{n_m}` with `δ_m` the neighbour's
/// position offset — the form the fused attention path evaluates without materialising any key (DESIGN §2.1).
/// Coefficients are fitted by ridge-regularised least squares, independently per layer, KV head, neighbour
/// configuration (the offsets of a token's neighbours) and frequency pair.
///
/// Retained sets that vary per prompt (score-based retention, `RetentionPolicy.scored`): the map depends only on the
/// dropped token's configuration — the grid offsets of its nearest retained neighbours — never on absolute positions or
/// on what the mask kept elsewhere, and in the de-rotated frame the same configuration is the same geometry in every
/// prompt. So a per-prompt mask needs no other model: each dropped token looks up its own configuration, in the dense
/// rebuild and in the fused path alike (which groups tokens by configuration per layer and head). What changes is the
/// distribution of configurations: a lattice repeats a few in every sample, score-based masks produce hundreds, most of
/// them rare. Hence (1) the fit sees the masks the same scoring rule gives on the collected caches (from their text
/// queries), so the common configurations are fitted on the tokens they will serve, and (2) a configuration seen fewer
/// than `LinearKeyReconstructorFit.minCount` times keeps the neighbour mean in the de-rotated frame, a map valid for
/// any configuration (DESIGN §2.2: 16% error against 14.5% for a fitted map), instead of a least-squares fit to a
/// handful of tokens — which also keeps the adapter small. Coverage (every 2x2 cell keeps a token) guarantees each
/// dropped token a neighbour one step away, so the fallback is never far.
public struct LinearKeyReconstructor: Sendable {
    public typealias Configuration = [GridNeighbours.Offset]

    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    public let rope: RotaryEmbedding
    /// `[layer * kvHeads + head][configuration]` → complex coefficients `[slot][pair] (re, im)`, slot-major.
    public internal(set) var coefficients: [[Configuration: [Float]]]

    public init(layers: Int, kvHeads: Int, headDim: Int, rope: RotaryEmbedding,
                coefficients: [[Configuration: [Float]]]) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.rope = rope
        self.coefficients = coefficients
    }

    /// Coefficients for a configuration, or the neighbour mean when the configuration was never seen in training.
    public func coefficients(layer: Int, head: Int, configuration: Configuration) -> (values: [Float], fitted: Bool) {
        if let c = coefficients[layer * kvHeads + head][configuration] { return (c, true) }
        let k = configuration.count, pairs = headDim / 2
        var mean = [Float](repeating: 0, count: k * pairs * 2)
        for m in 0..<k { for i in 0..<pairs { mean[(m * pairs + i) * 2] = 1 / Float(max(k, 1)) } }
        return (mean, false)
    }

    /// Rebuilds the dropped keys of one layer and head in the cached (rotated) frame.
    /// - Parameters:
    ///   - retainedKeys: `[retained, headDim]` rotated keys, in `neighbours.retained` order.
    ///   - positions: sequence position of every token of the span.
    ///   - out: `[dropped, headDim]`.
    /// - Returns: how many dropped tokens used the unfitted fallback.
    @discardableResult
    public func reconstruct(layer: Int, head: Int, neighbours: GridNeighbours, retainedKeys: UnsafePointer<Float>,
                            positions: [Int32], into out: UnsafeMutablePointer<Float>) -> Int {
        let d = headDim, pairs = d / 2
        var fallbacks = 0
        var rotation = [Float](repeating: 0, count: d)
        for (t, j) in neighbours.dropped.enumerated() {
            let (coef, fitted) = coefficients(layer: layer, head: head, configuration: neighbours.offsets[t])
            if !fitted { fallbacks += 1 }
            let o = out + t * d
            o.update(repeating: 0, count: d)
            for (m, n) in neighbours.neighbours[t].enumerated() {
                // e^{-iδθ}: the neighbour's key is rotated back by the position offset to the dropped token's position.
                let delta = Int(positions[neighbours.retained[n]]) - Int(positions[j])
                rope.fillTable(position: -delta, into: &rotation)
                let k = retainedKeys + n * d
                for i in 0..<pairs {
                    let ar = coef[(m * pairs + i) * 2], ai = coef[(m * pairs + i) * 2 + 1]
                    let cr = ar * rotation[2 * i] - ai * rotation[2 * i + 1]
                    let ci = ar * rotation[2 * i + 1] + ai * rotation[2 * i]
                    let kr = k[2 * i], ki = k[2 * i + 1]
                    o[2 * i] += cr * kr - ci * ki
                    o[2 * i + 1] += cr * ki + ci * kr
                }
            }
        }
        return fallbacks
    }
}

/// Accumulates the normal equations of the per-frequency complex least squares, sample by sample.
public struct LinearKeyReconstructorFit {
    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    public let rope: RotaryEmbedding
    /// Ridge strength relative to the mean diagonal of the Gram matrix.
    public var ridge: Double
    /// Configurations seen fewer times than this (per layer and head) are not fitted: they fall back to the neighbour
    /// mean. Structured masks repeat every configuration in every sample (1 keeps them all); score-based masks vary per
    /// prompt and produce a long tail of configurations seen a handful of times, whose least-squares fits would be
    /// noise and whose coefficients would fill the adapter (each costs every layer and head).
    public var minCount: Int

    // [layer * kvHeads + head][configuration] → per pair: Gram K x K and rhs K, complex, as doubles.
    private var normals: [[LinearKeyReconstructor.Configuration: (gram: [Double], rhs: [Double], count: Int)]]

    public init(layers: Int, kvHeads: Int, headDim: Int, rope: RotaryEmbedding, ridge: Double = 1e-3, minCount: Int = 1) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.rope = rope
        self.ridge = ridge
        self.minCount = minCount
        normals = Array(repeating: [:], count: layers * kvHeads)
    }

    /// Adds one span of one layer and head. `keys` are the rotated keys `[N, headDim]` of the whole span.
    public mutating func add(layer: Int, head: Int, keys: UnsafePointer<Float>, positions: [Int32],
                             neighbours: GridNeighbours) {
        let d = headDim, pairs = d / 2, n = positions.count
        // De-rotate every key of the span once.
        var derotated = [Float](repeating: 0, count: n * d)
        var table = [Float](repeating: 0, count: d)
        for t in 0..<n {
            (0..<d).forEach { derotated[t * d + $0] = keys[t * d + $0] }
            rope.fillTable(position: Int(positions[t]), into: &table)
            derotated.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress! + t * d, heads: 1, table: table, sign: -1) }
        }
        let slot = layer * kvHeads + head
        for (t, j) in neighbours.dropped.enumerated() {
            let config = neighbours.offsets[t], nb = neighbours.neighbours[t], k = nb.count
            guard k > 0 else { continue }
            var entry = normals[slot][config] ?? (Array(repeating: 0, count: pairs * k * k * 2),
                                                 Array(repeating: 0, count: pairs * k * 2), 0)
            for i in 0..<pairs {
                let yr = Double(derotated[j * d + 2 * i]), yi = Double(derotated[j * d + 2 * i + 1])
                for a in 0..<k {
                    let xa = neighbours.retained[nb[a]] * d + 2 * i
                    let ar = Double(derotated[xa]), ai = Double(derotated[xa + 1])
                    // rhs += conj(x_a) * y ; gram[a][b] += conj(x_a) * x_b
                    entry.rhs[(i * k + a) * 2] += ar * yr + ai * yi
                    entry.rhs[(i * k + a) * 2 + 1] += ar * yi - ai * yr
                    for b in 0..<k {
                        let xb = neighbours.retained[nb[b]] * d + 2 * i
                        let br = Double(derotated[xb]), bi = Double(derotated[xb + 1])
                        entry.gram[((i * k + a) * k + b) * 2] += ar * br + ai * bi
                        entry.gram[((i * k + a) * k + b) * 2 + 1] += ar * bi - ai * br
                    }
                }
            }
            entry.count += 1
            normals[slot][config] = entry
        }
    }

    /// Solves every accumulated system.
    public func solve() -> LinearKeyReconstructor {
        let pairs = headDim / 2
        var coefficients: [[LinearKeyReconstructor.Configuration: [Float]]] = Array(repeating: [:], count: layers * kvHeads)
        for slot in 0..<(layers * kvHeads) {
            for (config, e) in normals[slot] where e.count >= minCount {
                let k = config.count
                var out = [Float](repeating: 0, count: k * pairs * 2)
                for i in 0..<pairs {
                    var g = Array(e.gram[(i * k * k * 2)..<((i + 1) * k * k * 2)])
                    var r = Array(e.rhs[(i * k * 2)..<((i + 1) * k * 2)])
                    var trace = 0.0
                    for a in 0..<k { trace += g[(a * k + a) * 2] }
                    let lambda = ridge * max(trace / Double(k), 1e-12)
                    for a in 0..<k { g[(a * k + a) * 2] += lambda }
                    let x = solveComplex(&g, &r, k)
                    for m in 0..<k {
                        out[(m * pairs + i) * 2] = Float(x[2 * m])
                        out[(m * pairs + i) * 2 + 1] = Float(x[2 * m + 1])
                    }
                }
                coefficients[slot][config] = out
            }
        }
        return LinearKeyReconstructor(layers: layers, kvHeads: kvHeads, headDim: headDim, rope: rope,
                                      coefficients: coefficients)
    }
}

/// Gaussian elimination with partial pivoting on a small complex system (k x k, interleaved re/im).
private func solveComplex(_ a: inout [Double], _ b: inout [Double], _ k: Int) -> [Double] {
    func mag(_ r: Int, _ c: Int) -> Double { hypot(a[(r * k + c) * 2], a[(r * k + c) * 2 + 1]) }
    for col in 0..<k {
        var pivot = col
        for r in (col + 1)..<max(k, col + 1) where mag(r, col) > mag(pivot, col) { pivot = r }
        if pivot != col {
            for c in 0..<k { a.swapAt((col * k + c) * 2, (pivot * k + c) * 2); a.swapAt((col * k + c) * 2 + 1, (pivot * k + c) * 2 + 1) }
            b.swapAt(col * 2, pivot * 2); b.swapAt(col * 2 + 1, pivot * 2 + 1)
        }
        let pr = a[(col * k + col) * 2], pi = a[(col * k + col) * 2 + 1]
        let den = pr * pr + pi * pi
        guard den > 0 else { continue }
        for r in (col + 1)..<max(k, col + 1) {
            let xr = a[(r * k + col) * 2], xi = a[(r * k + col) * 2 + 1]
            // factor = x / p
            let fr = (xr * pr + xi * pi) / den, fi = (xi * pr - xr * pi) / den
            for c in col..<k {
                let cr = a[(col * k + c) * 2], ci = a[(col * k + c) * 2 + 1]
                a[(r * k + c) * 2] -= fr * cr - fi * ci
                a[(r * k + c) * 2 + 1] -= fr * ci + fi * cr
            }
            let br = b[col * 2], bi = b[col * 2 + 1]
            b[r * 2] -= fr * br - fi * bi
            b[r * 2 + 1] -= fr * bi + fi * br
        }
    }
    var x = [Double](repeating: 0, count: 2 * k)
    for r in stride(from: k - 1, through: 0, by: -1) {
        var sr = b[r * 2], si = b[r * 2 + 1]
        for c in (r + 1)..<max(k, r + 1) {
            let ar = a[(r * k + c) * 2], ai = a[(r * k + c) * 2 + 1]
            sr -= ar * x[2 * c] - ai * x[2 * c + 1]
            si -= ar * x[2 * c + 1] + ai * x[2 * c]
        }
        let pr = a[(r * k + r) * 2], pi = a[(r * k + r) * 2 + 1]
        let den = pr * pr + pi * pi
        if den > 0 {
            x[2 * r] = (sr * pr + si * pi) / den
            x[2 * r + 1] = (si * pr - sr * pi) / den
        }
    }
    return x
}
