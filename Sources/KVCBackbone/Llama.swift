import Dispatch
import Foundation
import KVCCore
import KVCGGUF

/// A Llama-architecture decoder (SmolLM2-135M here) loaded from a GGUF file, for fast inference on raw buffers.
///
/// - Weights: each linear map keeps float32 rows for batched prefill (BLAS gemm) and the file's quantized blocks
///   for single-token decoding (see `WeightMatrix`). The output head is `output.weight`, or the token embedding
///   when the file has none (tied embeddings).
/// - Every forward call appends the new positions to a `KVCache` and attends over what the cache returns; the
///   decoder never knows which cache implementation it has.
/// - Inputs are embeddings `[T][hiddenSize]`, so prompts can mix token embeddings with caller-supplied ones
///   (image tokens); see `PromptPiece`.
///
/// Thread-safety: the weights are immutable, so several threads may run forward passes at once, each with its own
/// cache. Errors on user input (token ids, lengths) throw `KVCError`; shape mismatches between the caller's buffers
/// and the model are preconditions.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let rope: RotaryEmbedding
    /// Threads for the decode kernels (matrix-vector products and attention). Prefill uses BLAS's threads
    /// (`BLAS.threads`).
    public var threads: Int
    /// Arithmetic of the decode steps' weight products (float32 unless a caller opts into bfloat16; see
    /// `WeightProducts`). On a CPU without AVX-512 BF16 a request for bfloat16 leaves float32 here, so callers that
    /// record the setting read back what runs.
    public var weightProducts: WeightProducts = .float32 {
        didSet { if weightProducts == .bfloat16 && !BFloat16Tile.supported { weightProducts = .float32 } }
    }
    /// Wall-clock seconds `init` took (reading, dequantizing and copying the weights).
    public let loadSeconds: Double

    fileprivate let tokenEmbedding: WeightMatrix
    fileprivate let layers: [DecoderLayer]
    fileprivate let outputNorm: [Float]
    fileprivate let outputHead: WeightMatrix

    public convenience init(path: String) throws {
        try self.init(file: GGUFFile(path: path))
    }

    /// Reads the configuration and every weight, checking names and shapes.
    /// - Throws: `KVCError` naming the tensor and its expected shape when one is missing or mis-shaped.
    public init(file: GGUFFile) throws {
        let start = DispatchTime.now()
        let config = try LlamaConfig(gguf: file)
        self.config = config
        rope = RotaryEmbedding(headDim: config.headDim, base: config.ropeBase)
        threads = ProcessInfo.processInfo.activeProcessorCount
        let h = config.hiddenSize
        tokenEmbedding = try WeightMatrix(file: file, tensors: ["token_embd.weight"], expectedRows: [config.vocabularySize],
                                          cols: h)
        outputHead = file.hasTensor("output.weight")
            ? try WeightMatrix(file: file, tensors: ["output.weight"], expectedRows: [config.vocabularySize], cols: h)
            : tokenEmbedding
        outputNorm = try loadVector(file, "output_norm.weight", count: h)
        layers = try (0..<config.layerCount).map { try DecoderLayer(file: file, index: $0, config: config) }
        loadSeconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }

    /// Bytes of weights a single-token step reads (the block forms of all matrices).
    public var decodeWeightBytes: Int {
        layers.reduce(outputHead.blockBytes) { $0 + $1.attention.qkv.blockBytes + $1.attention.output.blockBytes
            + $1.mlp.gateUp.blockBytes + $1.mlp.down.blockBytes }
    }

    /// A fresh plain cache shaped for this model (float16 unless asked otherwise).
    public func makeCache(precision: PlainKVCache.Precision = .float16, initialCapacity: Int = 256) -> PlainKVCache {
        PlainKVCache(config: config, precision: precision, initialCapacity: initialCapacity)
    }

    // MARK: Embeddings

    /// The token embeddings of `tokens`, row-major `[count][hiddenSize]`.
    /// - Throws: `KVCError` for an id outside the vocabulary.
    public func embed(tokens: [Int]) throws -> [Float] {
        let h = config.hiddenSize
        var out = [Float](repeating: 0, count: tokens.count * h)
        try out.withUnsafeMutableBufferPointer { o in
            for (i, id) in tokens.enumerated() {
                guard (0..<config.vocabularySize).contains(id) else {
                    throw KVCError("token id \(id) at prompt index \(i) is outside the vocabulary (0..<\(config.vocabularySize))")
                }
                (o.baseAddress! + i * h).update(from: tokenEmbedding.dense + id * h, count: h)
            }
        }
        return out
    }

    /// The embeddings of a prompt that mixes token ids and caller-supplied embeddings, `[count][hiddenSize]`.
    public func embed(_ prompt: [PromptPiece]) throws -> (embeddings: [Float], count: Int) {
        let h = config.hiddenSize
        var out: [Float] = []
        var count = 0
        for (i, piece) in prompt.enumerated() {
            switch piece {
            case .tokens(let ids):
                out += try embed(tokens: ids)
                count += ids.count
            case .embeddings(let values, let n), .layered(let values, let n, _):
                guard n >= 0, values.count == n * h else {
                    throw KVCError("prompt piece \(i): \(values.count) embedding values for \(n) positions, "
                                   + "expected \(n) x \(h) = \(n * h)")
                }
                out += values
                count += n
            }
        }
        return (out, count)
    }

    // MARK: Forward

    /// Sees each layer's post-RoPE queries during a forward call, to collect them (for example the text queries the
    /// capsule's attention-geometry loss needs). Arguments: layer index, queries row-major `[count][heads * headDim]`
    /// (valid only during the call), count, sequence position of the first row. Without an observer nothing is done.
    public typealias QueryObserver = (_ layer: Int, _ queries: UnsafePointer<Float>, _ count: Int, _ firstPosition: Int) -> Void

    /// Which positions of a forward call produce logits.
    public enum LogitRows: Sendable, Equatable {
        case none, last, all
        /// The last n positions (perplexity scores only the second half of a window).
        case lastRows(Int)
    }

    /// Runs the decoder over `count` new positions (embeddings `[count][hiddenSize]`) after what `cache` holds,
    /// appending their keys and values to it. Returns logits, row-major `[rows][vocabularySize]`.
    /// - Throws: `KVCError` when the sequence would exceed the model's context length.
    public func forward(embeddings: UnsafePointer<Float>, count: Int, cache: KVCache, logits: LogitRows = .last,
                        observeQueries: QueryObserver? = nil) throws -> [Float] {
        try forward(embeddings: embeddings, count: count, cache: cache, logits: logits, observeQueries: observeQueries,
                    injections: [])
    }

    private func forward(embeddings: UnsafePointer<Float>, count: Int, cache: KVCache, logits: LogitRows,
                         observeQueries: QueryObserver?, injections: [ResidualInjection]) throws -> [Float] {
        precondition(cache.layerCount == config.layerCount && cache.kvHeadCount == config.kvHeadCount
                     && cache.headDim == config.headDim, "LlamaModel.forward: the cache is shaped for another model")
        let start = cache.length
        guard start + count <= config.contextLength else {
            throw KVCError("sequence of \(start + count) positions (\(start) cached + \(count) new) exceeds the "
                           + "model's context length of \(config.contextLength)")
        }
        guard count > 0 else { return [] }
        return run(embeddings: embeddings, positions: Array(start..<(start + count)), cache: cache, logits: logits,
                   observeQueries: observeQueries, injections: injections)
    }

    /// The decoder over one row per entry of `positions` (rotated to that position). Rows of a batch may belong to
    /// different sequences: then `cache` routes each row's append and attention to its own cache (`BatchedDecoder`).
    func run(embeddings: UnsafePointer<Float>, positions: [Int], cache: KVCache, logits: LogitRows,
             observeQueries: QueryObserver? = nil, rowsAreSequences: Bool = false,
             injections: [ResidualInjection] = []) -> [Float] {
        let count = positions.count
        let work = Workspace(config: config, count: count)
        work.rowsAreSequences = rowsAreSequences
        work.x.update(from: embeddings, count: count * config.hiddenSize)
        work.queryObserver = observeQueries
        for (row, position) in positions.enumerated() {
            rope.fillTable(position: position, into: work.ropeTables + row * config.headDim)
        }
        let h = config.hiddenSize
        for (index, layer) in layers.enumerated() {
            for injection in injections where index > 0 {
                let n = injection.count * h
                injection.residual.withUnsafeBufferPointer { r in
                    let add = r.baseAddress! + (index - 1) * n, x = work.x + injection.firstRow * h
                    for j in 0..<n { x[j] += add[j] }
                }
            }
            layer.forward(work, layerIndex: index, firstPosition: positions[0], cache: cache, model: self)
        }
        return outputLogits(work, rows: logits)
    }

    public func forward(embeddings: [Float], cache: KVCache, logits: LogitRows = .last,
                        observeQueries: QueryObserver? = nil) throws -> [Float] {
        precondition(embeddings.count % config.hiddenSize == 0, "forward: embeddings are not rows of \(config.hiddenSize)")
        return try embeddings.withUnsafeBufferPointer {
            try forward(embeddings: $0.baseAddress!, count: embeddings.count / config.hiddenSize, cache: cache, logits: logits,
                        observeQueries: observeQueries)
        }
    }

    public func forward(tokens: [Int], cache: KVCache, logits: LogitRows = .last) throws -> [Float] {
        try forward(embeddings: embed(tokens: tokens), cache: cache, logits: logits)
    }

    public func forward(_ prompt: [PromptPiece], cache: KVCache, logits: LogitRows = .last,
                        observeQueries: QueryObserver? = nil) throws -> [Float] {
        let embeddings = try embed(prompt).embeddings
        let injections = try residualInjections(prompt)
        return try embeddings.withUnsafeBufferPointer {
            try forward(embeddings: $0.baseAddress!, count: $0.count / config.hiddenSize, cache: cache, logits: logits,
                        observeQueries: observeQueries, injections: injections)
        }
    }

    /// Where the `layered` pieces of `prompt` steer the residual stream.
    private func residualInjections(_ prompt: [PromptPiece]) throws -> [ResidualInjection] {
        var injections: [ResidualInjection] = []
        var row = 0
        for (i, piece) in prompt.enumerated() {
            if case .layered(_, let n, let residual) = piece {
                let expected = (config.layerCount - 1) * n * config.hiddenSize
                guard residual.count == expected else {
                    throw KVCError("prompt piece \(i): \(residual.count) residual values for \(n) positions, expected "
                                   + "\(config.layerCount - 1) layers x \(n) x \(config.hiddenSize) = \(expected)")
                }
                injections.append(ResidualInjection(firstRow: row, count: n, residual: residual))
            }
            row += piece.count
        }
        return injections
    }

    private func outputLogits(_ work: Workspace, rows: LogitRows) -> [Float] {
        let h = config.hiddenSize, vocab = config.vocabularySize, t = work.count
        let n: Int
        switch rows {
        case .none: return []
        case .last: n = 1
        case .all: n = t
        case .lastRows(let k): n = max(0, min(k, t))
        }
        guard n > 0 else { return [] }
        let first = work.x + (t - n) * h
        rmsNorm(first, weight: outputNorm, epsilon: config.rmsNormEpsilon, into: work.normed, count: n, width: h)
        var out = [Float](repeating: 0, count: n * vocab)
        out.withUnsafeMutableBufferPointer { apply(outputHead, work.normed, count: n, into: $0.baseAddress!, threads: threads,
                                                      batch: work.rowsAreSequences, products: weightProducts) }
        return out
    }
}

/// A prompt made of token ids and caller-supplied embeddings (for example a vision front end's image tokens),
/// concatenated in order.
public enum PromptPiece: Sendable, Equatable {
    case tokens([Int])
    /// `count` positions of `hiddenSize` floats each, row-major.
    case embeddings([Float], count: Int)
    /// Embeddings whose positions also receive a vector added to the residual stream at the input of every later
    /// layer (deep prompt tuning, as in P-Tuning v2): `residual` is `[layers - 1][count][hiddenSize]`, its block `l`
    /// added before layer `l + 1`. The layers' own code is unchanged; only these positions' inputs are steered.
    case layered([Float], count: Int, residual: [Float])

    public var count: Int {
        switch self {
        case .tokens(let ids): return ids.count
        case .embeddings(_, let n), .layered(_, let n, _): return n
        }
    }
}

/// Vectors added to the residual stream of `count` consecutive rows of a forward call, before each layer after the
/// first (`PromptPiece.layered`).
struct ResidualInjection {
    var firstRow: Int
    var count: Int
    /// `[layers - 1][count][hiddenSize]`.
    var residual: [Float]
}

extension Array where Element == PromptPiece {
    /// Positions the pieces occupy in the cache.
    public var positionCount: Int { reduce(0) { $0 + $1.count } }
}

// MARK: - Building blocks

/// Buffers of one forward call over `count` positions.
private final class Workspace {
    let count: Int
    let x: UnsafeMutablePointer<Float>          // residual stream [T][hidden]
    let normed: UnsafeMutablePointer<Float>     // [T][hidden]
    let qkv: UnsafeMutablePointer<Float>        // [T][q | k | v]
    let queries: UnsafeMutablePointer<Float>    // [T][heads * headDim]
    let keys: UnsafeMutablePointer<Float>       // [kvHeads][T][headDim]
    let values: UnsafeMutablePointer<Float>     // [kvHeads][T][headDim]
    let attention: UnsafeMutablePointer<Float>  // [T][heads * headDim]
    let projected: UnsafeMutablePointer<Float>  // [T][hidden]
    let gateUp: UnsafeMutablePointer<Float>     // [T][gate | up]
    let activated: UnsafeMutablePointer<Float>  // [T][intermediate]
    let ropeTables: UnsafeMutablePointer<Float> // [T][headDim] interleaved cos/sin
    var queryObserver: LlamaModel.QueryObserver?
    /// Rows are one new token each of different sequences (a batched decode step), not a prompt.
    var rowsAreSequences = false
    private let all: [UnsafeMutablePointer<Float>]

    init(config c: LlamaConfig, count t: Int) {
        count = t
        func make(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            return p
        }
        x = make(t * c.hiddenSize)
        normed = make(t * c.hiddenSize)
        qkv = make(t * (c.queryDim + 2 * c.kvDim))
        queries = make(t * c.queryDim)
        keys = make(t * c.kvDim)
        values = make(t * c.kvDim)
        attention = make(t * c.queryDim)
        projected = make(t * c.hiddenSize)
        gateUp = make(t * 2 * c.intermediateSize)
        activated = make(t * c.intermediateSize)
        ropeTables = make(t * c.headDim)
        all = [x, normed, qkv, queries, keys, values, attention, projected, gateUp, activated, ropeTables]
    }

    deinit { all.forEach { $0.deallocate() } }
}

/// A linear map applied to the `count` rows of a forward call: the block kernels for one row or a batched decode step,
/// gemm otherwise. One row takes the AVX-512 tile kernel where there is one: it is bit-identical to `BlockMatVec` and
/// 10-15% faster even with half of each register idle, so single-stream decoding and batches share one kernel.
@inline(__always)
private func apply(_ w: WeightMatrix, _ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>, threads: Int,
                   batch: Bool, products: WeightProducts) {
    if count == 1 && !WideTile.enabled && products == .float32 {
        w.multiplyVector(x, into: y, threads: threads)
    } else if batch || count == 1 {
        // A batched decode step: the block kernels, reading each block once for several sequences (same sums as alone).
        BlockMatMat.run(w, x: x, count: count, y: y, threads: threads, products: products)
    } else {
        w.multiply(x, count: count, into: y)
    }
}

private final class Attention {
    let qkv: WeightMatrix      // rows: q (heads*headDim) | k (kvHeads*headDim) | v (kvHeads*headDim)
    let output: WeightMatrix

    init(file: GGUFFile, prefix: String, config c: LlamaConfig) throws {
        qkv = try WeightMatrix(file: file, tensors: ["\(prefix).attn_q.weight", "\(prefix).attn_k.weight", "\(prefix).attn_v.weight"],
                               expectedRows: [c.queryDim, c.kvDim, c.kvDim], cols: c.hiddenSize, displayName: "\(prefix).attn_qkv")
        output = try WeightMatrix(file: file, tensors: ["\(prefix).attn_output.weight"], expectedRows: [c.hiddenSize],
                                  cols: c.queryDim)
    }

    /// Reads `work.normed`, writes the attention block's output (before the residual add) to `work.projected`.
    func forward(_ work: Workspace, layerIndex: Int, firstPosition: Int, cache: KVCache, model: LlamaModel) {
        let c = model.config
        let t = work.count, d = c.headDim
        let qkvWidth = c.queryDim + 2 * c.kvDim
        apply(qkv, work.normed, count: t, into: work.qkv, threads: model.threads, batch: work.rowsAreSequences,
              products: model.weightProducts)
        // Split q | k | v, rotate q and k to their positions, and lay k and v out head-major for the cache.
        for i in 0..<t {
            let row = work.qkv + i * qkvWidth
            let table = work.ropeTables + i * d
            let q = work.queries + i * c.queryDim
            q.update(from: row, count: c.queryDim)
            model.rope.apply(q, heads: c.headCount, table: table)
            for h in 0..<c.kvHeadCount {
                let k = work.keys + (h * t + i) * d
                k.update(from: row + c.queryDim + h * d, count: d)
                model.rope.apply(k, heads: 1, table: table)
                (work.values + (h * t + i) * d).update(from: row + c.queryDim + c.kvDim + h * d, count: d)
            }
        }
        work.queryObserver?(layerIndex, work.queries, t, firstPosition)
        cache.append(layer: layerIndex, keys: work.keys, values: work.values, count: t)
        cache.attention(layer: layerIndex, queries: work.queries, count: t, firstPosition: firstPosition,
                        headCount: c.headCount, output: work.attention, threads: model.threads)
        apply(output, work.attention, count: t, into: work.projected, threads: model.threads, batch: work.rowsAreSequences,
              products: model.weightProducts)
    }
}

private final class MLP {
    let gateUp: WeightMatrix   // rows: gate (intermediate) | up (intermediate)
    let down: WeightMatrix

    init(file: GGUFFile, prefix: String, config c: LlamaConfig) throws {
        gateUp = try WeightMatrix(file: file, tensors: ["\(prefix).ffn_gate.weight", "\(prefix).ffn_up.weight"],
                                  expectedRows: [c.intermediateSize, c.intermediateSize], cols: c.hiddenSize,
                                  displayName: "\(prefix).ffn_gate_up")
        down = try WeightMatrix(file: file, tensors: ["\(prefix).ffn_down.weight"], expectedRows: [c.hiddenSize],
                                cols: c.intermediateSize)
    }

    /// SwiGLU: down(silu(gate(x)) * up(x)), from `work.normed` to `work.projected`.
    func forward(_ work: Workspace, model: LlamaModel) {
        let f = model.config.intermediateSize, t = work.count
        apply(gateUp, work.normed, count: t, into: work.gateUp, threads: model.threads, batch: work.rowsAreSequences,
              products: model.weightProducts)
        for i in 0..<t {
            let gate = work.gateUp + i * 2 * f, up = gate + f, out = work.activated + i * f
            for j in 0..<f {
                let g = gate[j]
                out[j] = g / (1 + expf(-g)) * up[j]
            }
        }
        apply(down, work.activated, count: t, into: work.projected, threads: model.threads, batch: work.rowsAreSequences,
              products: model.weightProducts)
    }
}

private final class DecoderLayer {
    let attentionNorm: [Float]
    let attention: Attention
    let mlpNorm: [Float]
    let mlp: MLP

    init(file: GGUFFile, index: Int, config c: LlamaConfig) throws {
        let prefix = "blk.\(index)"
        attentionNorm = try loadVector(file, "\(prefix).attn_norm.weight", count: c.hiddenSize)
        attention = try Attention(file: file, prefix: prefix, config: c)
        mlpNorm = try loadVector(file, "\(prefix).ffn_norm.weight", count: c.hiddenSize)
        mlp = try MLP(file: file, prefix: prefix, config: c)
    }

    func forward(_ work: Workspace, layerIndex: Int, firstPosition: Int, cache: KVCache, model: LlamaModel) {
        let c = model.config, n = work.count * c.hiddenSize
        rmsNorm(work.x, weight: attentionNorm, epsilon: c.rmsNormEpsilon, into: work.normed, count: work.count, width: c.hiddenSize)
        attention.forward(work, layerIndex: layerIndex, firstPosition: firstPosition, cache: cache, model: model)
        addInPlace(work.x, work.projected, count: n)
        rmsNorm(work.x, weight: mlpNorm, epsilon: c.rmsNormEpsilon, into: work.normed, count: work.count, width: c.hiddenSize)
        mlp.forward(work, model: model)
        addInPlace(work.x, work.projected, count: n)
    }
}

// MARK: - Small numeric helpers

/// A 1-D float tensor of exactly `count` elements.
private func loadVector(_ file: GGUFFile, _ name: String, count: Int) throws -> [Float] {
    guard file.hasTensor(name) else { throw KVCError.file(file.path, "tensor '\(name)' is missing (expected shape [\(count)])") }
    let info = try file.tensor(name)
    guard info.dims == [count] else {
        throw KVCError.file(file.path, "tensor '\(name)' has shape \(info.dims), expected [\(count)]")
    }
    return try file.dequantize(info)
}

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight` for `count` rows of `width`.
private func rmsNorm(_ x: UnsafePointer<Float>, weight: [Float], epsilon: Float, into out: UnsafeMutablePointer<Float>,
                     count: Int, width: Int) {
    weight.withUnsafeBufferPointer { w in
        for r in 0..<count {
            let row = x + r * width, o = out + r * width
            let meanSquare = BLAS.dot(n: width, x: row, y: row) / Float(width)
            let scale = 1 / (meanSquare + epsilon).squareRoot()
            for j in 0..<width { o[j] = row[j] * scale * w[j] }
        }
    }
}

@inline(__always)
private func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
    for j in 0..<count { x[j] += y[j] }
}
