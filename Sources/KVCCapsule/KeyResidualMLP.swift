import KVCBackbone
import KVCCore

/// The nonlinear part of the key reconstructor (DESIGN §2: "a small MLP per layer, heads batched"), dense mode only.
///
/// Per layer, a two-layer MLP sees what the linear map saw — the de-rotated keys of the dropped token's nearest
/// retained neighbours with their grid offsets — plus the linear prediction itself and a one-hot of the KV head, and
/// outputs a residual in the de-rotated frame. The residual is added to the linear prediction and the sum is rotated to
/// the dropped token's position, so the MLP never sees absolute positions and stays exact about RoPE. Inputs and the
/// output are scaled by the layer's key RMS (keys of different layers differ in norm by 10x). The linear part alone is
/// what the fused path evaluates; a layer whose MLP did not beat the linear map on held-out samples has no weights.
public struct KeyResidualMLP: Sendable {
    public struct Layer: Sendable, Equatable {
        /// Key RMS of the layer (de-rotated frame), dividing the inputs and multiplying the output.
        public var scale: Float
        public var w1: [Float]   // [hidden, inputSize], PyTorch layout
        public var b1: [Float]   // [hidden]
        public var w2: [Float]   // [headDim, hidden]
        public var b2: [Float]   // [headDim]
    }

    public let kvHeads: Int
    public let headDim: Int
    /// Neighbour slots in the input (the capsule's `neighbours`).
    public let slots: Int
    public let hidden: Int
    /// Per layer; nil = the layer keeps the linear reconstruction.
    public var layers: [Layer?]

    public init(layers: [Layer?], kvHeads: Int, headDim: Int, slots: Int, hidden: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.slots = slots
        self.hidden = hidden
    }

    /// Per slot: key (headDim), offsets (dRow, dCol) / 2, presence; then the linear prediction and the head one-hot.
    public static func inputSize(headDim: Int, slots: Int, kvHeads: Int) -> Int { slots * (headDim + 3) + headDim + kvHeads }
    public var inputSize: Int { Self.inputSize(headDim: headDim, slots: slots, kvHeads: kvHeads) }

    /// Features `[dropped, inputSize]` of one layer and head.
    /// - Parameters:
    ///   - retained: de-rotated retained keys `[retained, headDim]` (in `neighbours.retained` order).
    ///   - linear: de-rotated linear predictions of the dropped keys `[dropped, headDim]`.
    public static func features(neighbours nb: GridNeighbours, retained: [Float], linear: [Float], head: Int, kvHeads: Int,
                                headDim d: Int, slots: Int, scale: Float) -> [Float] {
        let width = inputSize(headDim: d, slots: slots, kvHeads: kvHeads), inv = 1 / scale
        var x = [Float](repeating: 0, count: nb.dropped.count * width)
        for t in 0..<nb.dropped.count {
            let row = t * width
            for (m, n) in nb.neighbours[t].prefix(slots).enumerated() {
                let at = row + m * (d + 3)
                for e in 0..<d { x[at + e] = retained[n * d + e] * inv }
                x[at + d] = Float(nb.offsets[t][m].dRow) / 2
                x[at + d + 1] = Float(nb.offsets[t][m].dCol) / 2
                x[at + d + 2] = 1
            }
            let at = row + slots * (d + 3)
            for e in 0..<d { x[at + e] = linear[t * d + e] * inv }
            x[at + d + head] = 1
        }
        return x
    }

    /// Adds the residual to the dropped keys of one layer and head, in the cached (rotated) frame.
    /// - Parameters:
    ///   - retainedKeys: rotated retained keys `[retained, headDim]`.
    ///   - dropped: rotated linear predictions `[dropped, headDim]`, updated in place.
    public func addResidual(layer: Int, head: Int, neighbours nb: GridNeighbours, retainedKeys: [Float], positions: [Int32],
                            rope: RotaryEmbedding, dropped: inout [Float]) {
        guard let w = layers[layer], !nb.dropped.isEmpty else { return }
        let d = headDim, rows = nb.dropped.count
        let retained = rope.rotateRows(retainedKeys, positions: nb.retained.map { positions[$0] }, sign: -1)
        let droppedPositions = nb.dropped.map { positions[$0] }
        let linear = rope.rotateRows(dropped, positions: droppedPositions, sign: -1)
        let x = Self.features(neighbours: nb, retained: retained, linear: linear, head: head, kvHeads: kvHeads, headDim: d,
                              slots: slots, scale: w.scale)
        var h = [Float](repeating: 0, count: rows * hidden)
        for r in 0..<rows { for j in 0..<hidden { h[r * hidden + j] = w.b1[j] } }
        BLAS.gemm(transB: true, m: rows, n: hidden, k: inputSize, a: x, b: w.w1, beta: 1, c: &h)
        for i in 0..<h.count where h[i] < 0 { h[i] = 0 }
        var y = [Float](repeating: 0, count: rows * d)
        for r in 0..<rows { for e in 0..<d { y[r * d + e] = w.b2[e] } }
        BLAS.gemm(transB: true, m: rows, n: d, k: hidden, a: h, b: w.w2, beta: 1, c: &y)
        for i in 0..<y.count { y[i] = linear[i] + w.scale * y[i] }
        dropped = rope.rotateRows(y, positions: droppedPositions, sign: 1)
    }
}

extension RotaryEmbedding {
    /// Rotates each row of `x` (`[positions.count, headDim]`) by its own position (`sign` -1 de-rotates).
    public func rotateRows(_ x: [Float], positions: [Int32], sign: Float) -> [Float] {
        var out = x
        var table = [Float](repeating: 0, count: headDim)
        out.withUnsafeMutableBufferPointer { o in
            for (r, p) in positions.enumerated() {
                fillTable(position: Int(p), into: &table)
                apply(o.baseAddress! + r * headDim, heads: 1, table: table, sign: sign)
            }
        }
        return out
    }
}

extension KeyResidualMLP {
    /// Tensors `mlp.<layer>.{w1,b1,w2,b2}` for layers that have weights, and `mlp.scales` (F32 `[layers]`, 0 = no MLP).
    public func add(to writer: inout SafetensorsWriter, dtype: SafetensorsDType) throws {
        let width = inputSize
        try writer.add("mlp.scales", floats: layers.map { $0?.scale ?? 0 }, shape: [layers.count], dtype: .f32)
        for (l, w) in layers.enumerated() {
            guard let w else { continue }
            try writer.add("mlp.\(l).w1", floats: w.w1, shape: [hidden, width], dtype: dtype)
            try writer.add("mlp.\(l).b1", floats: w.b1, shape: [hidden], dtype: dtype)
            try writer.add("mlp.\(l).w2", floats: w.w2, shape: [headDim, hidden], dtype: dtype)
            try writer.add("mlp.\(l).b2", floats: w.b2, shape: [headDim], dtype: dtype)
        }
    }

    /// Reads what `add(to:dtype:)` wrote, checking every shape against the header's sizes.
    public static func read(from file: SafetensorsFile, path: String, layers: Int, kvHeads: Int, headDim: Int, slots: Int,
                            hidden: Int) throws -> KeyResidualMLP {
        let width = inputSize(headDim: headDim, slots: slots, kvHeads: kvHeads)
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            let info = try file.info(name)
            guard info.shape == shape else {
                throw KVCError.file(path, "tensor '\(name)' has shape \(info.shape), expected \(shape)")
            }
            let v = try file.floats(name)
            guard v.allSatisfy(\.isFinite) else { throw KVCError.file(path, "tensor '\(name)' holds NaN or Inf") }
            return v
        }
        let scales = try tensor("mlp.scales", [layers])
        let weights: [Layer?] = try (0..<layers).map { l in
            guard scales[l] > 0 else { return nil }
            return Layer(scale: scales[l], w1: try tensor("mlp.\(l).w1", [hidden, width]), b1: try tensor("mlp.\(l).b1", [hidden]),
                         w2: try tensor("mlp.\(l).w2", [headDim, hidden]), b2: try tensor("mlp.\(l).b2", [headDim]))
        }
        return KeyResidualMLP(layers: weights, kvHeads: kvHeads, headDim: headDim, slots: slots, hidden: hidden)
    }
}
