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

    /// Runs the packed batch and returns the logits of the requested rows.
    /// - Parameters:
    ///   - input: `[rows, hidden]`, the samples' embeddings one after another.
    ///   - lengths: rows of each sample (they sum to `rows`); positions restart at 0 for every sample.
    ///   - logitRows: rows (indices into `input`) whose next-token logits are wanted.
    /// - Returns: `[logitRows.count, vocab]`.
    public func logits(input: Tensor, lengths: [Int], logitRows: [Int]) -> Tensor {
        let hidden = finalHidden(input: input, lengths: lengths, rows: logitRows)
        return linear(hidden, weight: tokenEmbedding)
    }

    /// Normalised last hidden states of `rows` (`[rows.count, hidden]`).
    public func finalHidden(input: Tensor, lengths: [Int], rows: [Int]) -> Tensor {
        let c = config
        precondition(input.rank == 2 && input.shape[1] == c.hiddenSize, "LlamaGraph: input \(input.shape), expected [rows, \(c.hiddenSize)]")
        precondition(lengths.reduce(0, +) == input.shape[0], "LlamaGraph: lengths \(lengths) do not sum to \(input.shape[0]) rows")
        let eps = c.rmsNormEpsilon
        var x = input
        for w in layers {
            let h = x.rmsNorm(weight: w.attentionNorm, eps: eps)
            let q = linear(h, weight: w.q), k = linear(h, weight: w.k), v = linear(h, weight: w.v)
            var outputs: [Tensor] = []
            var start = 0
            for t in lengths {
                let positions = Array(0..<t)
                func heads(_ m: Tensor, _ count: Int) -> Tensor {
                    m.slice(axis: 0, start..<(start + t)).reshaped([t, count, c.headDim]).permuted([1, 0, 2])
                }
                let qh = heads(q, c.headCount).rope(positions: positions, base: Float(c.ropeBase), layout: .interleaved)
                let kh = heads(k, c.kvHeadCount).rope(positions: positions, base: Float(c.ropeBase), layout: .interleaved)
                let vh = heads(v, c.kvHeadCount)
                let o = scaledDotProductAttention(query: qh, key: kh, value: vh, causal: true)
                outputs.append(o.permuted([1, 0, 2]).reshaped([t, c.queryDim]))
                start += t
            }
            let attention = outputs.count == 1 ? outputs[0] : Tensor.concat(outputs, axis: 0)
            x = x + linear(attention, weight: w.output)
            let h2 = x.rmsNorm(weight: w.ffnNorm, eps: eps)
            x = x + linear(linear(h2, weight: w.gate).silu() * linear(h2, weight: w.up), weight: w.down)
        }
        return x.indexSelect(axis: 0, rows).rmsNorm(weight: outputNorm, eps: eps)
    }
}
