import KVCCore
import KVCGGUF
import KVCTensor

/// The frozen decoder as a differentiable function of its input embeddings, built from autodiff ops.
///
/// `LlamaModel` is the fast inference path; this is the training path for modules that sit *before* the decoder
/// (the vision front end): gradients flow back through every layer into the input embeddings, while the weights are
/// constants (`requiresGrad == false`), so no weight gradient is ever computed or stored.
///
/// Samples are **packed**: the rows of all samples of a batch are concatenated into one `[rows, hidden]` matrix, so the
/// projections and the MLP are single large GEMMs with no padding, and only attention runs per sample.
public final class LlamaGraph {
    public struct LayerWeights {
        public var attentionNorm, q, k, v, output, ffnNorm, gate, up, down: Tensor
    }

    public let config: LlamaConfig
    public let tokenEmbedding: Tensor   // [vocab, hidden], also the output head (tied)
    public let outputNorm: Tensor
    public let layers: [LayerWeights]

    public init(config: LlamaConfig, tokenEmbedding: Tensor, outputNorm: Tensor, layers: [LayerWeights]) {
        precondition(tokenEmbedding.shape == [config.vocabularySize, config.hiddenSize],
                     "LlamaGraph: token embedding \(tokenEmbedding.shape) does not match the config")
        precondition(layers.count == config.layerCount, "LlamaGraph: \(layers.count) layers, config says \(config.layerCount)")
        self.config = config
        self.tokenEmbedding = tokenEmbedding
        self.outputNorm = outputNorm
        self.layers = layers
    }

    /// Loads every weight of a GGUF Llama file dequantized to float32 (about 4 bytes per parameter).
    public convenience init(file: GGUFFile) throws {
        let config = try LlamaConfig(gguf: file)
        let (h, f, kv) = (config.hiddenSize, config.intermediateSize, config.kvDim)
        func load(_ name: String, _ shape: [Int]) throws -> Tensor {
            let info = try file.tensor(name)
            let expected = shape.reversed().map { $0 }   // GGUF lists ne0 (the row length) first
            guard info.dims == expected else {
                throw KVCError.file(file.path, "tensor '\(name)' has dims \(info.dims), expected \(expected)")
            }
            return Tensor(shape: shape, values: try file.dequantize(name))
        }
        let layers = try (0..<config.layerCount).map { i -> LayerWeights in
            let p = "blk.\(i)."
            return LayerWeights(
                attentionNorm: try load(p + "attn_norm.weight", [h]), q: try load(p + "attn_q.weight", [config.queryDim, h]),
                k: try load(p + "attn_k.weight", [kv, h]), v: try load(p + "attn_v.weight", [kv, h]),
                output: try load(p + "attn_output.weight", [h, config.queryDim]),
                ffnNorm: try load(p + "ffn_norm.weight", [h]), gate: try load(p + "ffn_gate.weight", [f, h]),
                up: try load(p + "ffn_up.weight", [f, h]), down: try load(p + "ffn_down.weight", [h, f]))
        }
        try self.init(config: config, tokenEmbedding: load("token_embd.weight", [config.vocabularySize, h]),
                      outputNorm: load("output_norm.weight", [h]), layers: layers)
    }

    /// Token embeddings `[ids.count, hidden]`, constant.
    public func embed(_ ids: [Int]) -> Tensor {
        Tensor.withNoGrad { embedding(tokenEmbedding, ids: ids) }
    }

    /// How the rows of a packed batch form sequences. A group is a shared prefix followed by suffixes that each
    /// continue it independently (a prompt tree): every suffix attends to the prefix and to itself, never to a sibling,
    /// so one image's prefix serves all of its questions at the cost of one. Rows are laid out group by group:
    /// prefix rows, then each suffix's rows. Positions restart at 0 for every group; a suffix continues at the
    /// prefix's length.
    public struct Packing: Sendable, Equatable {
        public struct Group: Sendable, Equatable {
            public var prefix: Int
            public var suffixes: [Int]
            public init(prefix: Int, suffixes: [Int] = []) {
                self.prefix = prefix
                self.suffixes = suffixes
            }
            public var rows: Int { prefix + suffixes.reduce(0, +) }
        }

        public var groups: [Group]
        public init(groups: [Group]) { self.groups = groups }
        /// Independent sequences of the given lengths.
        public init(lengths: [Int]) { groups = lengths.map { Group(prefix: $0) } }
        public var rows: Int { groups.reduce(0) { $0 + $1.rows } }
    }

    /// Runs the packed batch and returns the logits of the requested rows.
    /// - Parameters:
    ///   - input: `[rows, hidden]`, the samples' embeddings one after another.
    ///   - lengths: rows of each sample (they sum to `rows`); positions restart at 0 for every sample.
    ///   - logitRows: rows (indices into `input`) whose next-token logits are wanted.
    /// - Returns: `[logitRows.count, vocab]`.
    public func logits(input: Tensor, lengths: [Int], logitRows: [Int], steering: Steering? = nil) -> Tensor {
        logits(input: input, packing: Packing(lengths: lengths), logitRows: logitRows, steering: steering)
    }

    public func logits(input: Tensor, packing: Packing, logitRows: [Int], steering: Steering? = nil) -> Tensor {
        linear(finalHidden(input: input, packing: packing, rows: logitRows, steering: steering), weight: tokenEmbedding)
    }

    /// Vectors added to the residual stream of some rows before every layer after the first: the training side of
    /// `PromptPiece.layered` (deep prompt tuning).
    public struct Steering {
        /// `[rows, P]`, constant: row r receives vector p where `selection[r, p] == 1`.
        public var selection: Tensor
        /// `[layers - 1, P, hidden]`: block l is added before layer l + 1.
        public var perLayer: Tensor
        public init(selection: Tensor, perLayer: Tensor) {
            self.selection = selection
            self.perLayer = perLayer
        }
    }

    /// Median root-mean-square of the residual stream's rows at the input of every layer after the first (what a
    /// steering vector must be measured against: it grows about 15-fold through SmolLM2's 30 layers). The median,
    /// because a few positions (the first token) carry outsized activations.
    public func residualRMS(input: Tensor, lengths: [Int]) -> [Float] {
        var rms: [Float] = []
        _ = Tensor.withNoGrad {
            finalHidden(input: input, packing: Packing(lengths: lengths), rows: [0]) { index, x in
                guard index > 0 else { return }
                let width = x.shape[1]
                let rowRMS = (0..<x.shape[0]).map { r -> Float in
                    var s: Float = 0
                    for j in 0..<width { s += x.data[r * width + j] * x.data[r * width + j] }
                    return (s / Float(width)).squareRoot()
                }.sorted()
                rms.append(rowRMS.isEmpty ? 0 : rowRMS[rowRMS.count / 2])
            }
        }
        return rms
    }

    /// Normalised last hidden states of `rows` (`[rows.count, hidden]`). `observeResidual` sees the residual stream
    /// at the input of each layer (index, `[rows, hidden]`).
    public func finalHidden(input: Tensor, packing: Packing, rows: [Int], steering: Steering? = nil,
                            observeResidual: ((Int, Tensor) -> Void)? = nil) -> Tensor {
        let c = config
        precondition(input.rank == 2 && input.shape[1] == c.hiddenSize, "LlamaGraph: input \(input.shape), expected [rows, \(c.hiddenSize)]")
        precondition(packing.rows == input.shape[0], "LlamaGraph: packing covers \(packing.rows) rows, input has \(input.shape[0])")
        let eps = c.rmsNormEpsilon, base = Float(c.ropeBase)
        if let steering {
            precondition(steering.selection.shape == [input.shape[0], steering.perLayer.shape[1]]
                         && steering.perLayer.shape == [c.layerCount - 1, steering.perLayer.shape[1], c.hiddenSize],
                         "LlamaGraph: steering \(steering.selection.shape) x \(steering.perLayer.shape) does not fit the input")
        }
        var x = input
        for (index, w) in layers.enumerated() {
            if let steering, index > 0 {
                let vectors = steering.perLayer.slice(axis: 0, (index - 1)..<index)
                    .reshaped([steering.perLayer.shape[1], c.hiddenSize])
                x = x + matmul(steering.selection, vectors)
            }
            observeResidual?(index, x)
            let h = x.rmsNorm(weight: w.attentionNorm, eps: eps)
            let q = linear(h, weight: w.q), k = linear(h, weight: w.k), v = linear(h, weight: w.v)
            // [heads, count, headDim] of rows start..<start+count, keys and queries rotated to `firstPosition`...
            func heads(_ m: Tensor, _ n: Int, _ start: Int, _ count: Int) -> Tensor {
                m.slice(axis: 0, start..<(start + count)).reshaped([count, n, c.headDim]).permuted([1, 0, 2])
            }
            func rotated(_ m: Tensor, _ n: Int, _ start: Int, _ count: Int, from first: Int) -> Tensor {
                heads(m, n, start, count).rope(positions: Array(first..<(first + count)), base: base, layout: .interleaved)
            }
            var outputs: [Tensor] = []
            var start = 0
            for g in packing.groups {
                let p = g.prefix
                let kp = rotated(k, c.kvHeadCount, start, p, from: 0), vp = heads(v, c.kvHeadCount, start, p)
                if p > 0 {
                    let o = scaledDotProductAttention(query: rotated(q, c.headCount, start, p, from: 0), key: kp, value: vp,
                                                      causal: true)
                    outputs.append(o.permuted([1, 0, 2]).reshaped([p, c.queryDim]))
                }
                start += p
                for t in g.suffixes {
                    let ks = rotated(k, c.kvHeadCount, start, t, from: p), vs = heads(v, c.kvHeadCount, start, t)
                    let o = scaledDotProductAttention(
                        query: rotated(q, c.headCount, start, t, from: p),
                        key: p > 0 ? Tensor.concat([kp, ks], axis: 1) : ks,
                        value: p > 0 ? Tensor.concat([vp, vs], axis: 1) : vs, causal: true)
                    outputs.append(o.permuted([1, 0, 2]).reshaped([t, c.queryDim]))
                    start += t
                }
            }
            let attention = outputs.count == 1 ? outputs[0] : Tensor.concat(outputs, axis: 0)
            x = x + linear(attention, weight: w.output)
            let h2 = x.rmsNorm(weight: w.ffnNorm, eps: eps)
            x = x + linear(linear(h2, weight: w.gate).silu() * linear(h2, weight: w.up), weight: w.down)
        }
        return x.indexSelect(axis: 0, rows).rmsNorm(weight: outputNorm, eps: eps)
    }
}
