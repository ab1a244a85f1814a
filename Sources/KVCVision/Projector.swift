import KVCCore
import KVCTensor

/// Maps encoder tokens into the decoder's embedding space (LLaVA-style): Linear → GELU → Linear, then a fixed scale
/// chosen at initialisation so projected tokens start at the norm of the decoder's own token embeddings (a frozen
/// decoder reads inputs far off that norm poorly, and learning the scale first wastes steps).
public final class Projector: Module {
    public let first: Linear
    public let second: Linear
    /// Fixed multiplier on the output (saved with the checkpoint, not trained).
    public var outputScale: Float

    public init(inputDim: Int, hiddenDim: Int, outputDim: Int, outputScale: Float = 1, rng: inout SeededRandom) {
        first = Linear(inputDim, hiddenDim, rng: &rng)
        second = Linear(hiddenDim, outputDim, rng: &rng)
        self.outputScale = outputScale
    }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        first.namedParameters.map { ("first.\($0.name)", $0.tensor) } + second.namedParameters.map { ("second.\($0.name)", $0.tensor) }
    }

    /// `[..., inputDim]` → `[..., outputDim]`.
    public func callAsFunction(_ x: Tensor) -> Tensor { second(first(x).gelu()) * outputScale }

    /// Sets `outputScale` so the mean row norm of `self(sample)` equals `targetNorm`.
    public func calibrate(on sample: Tensor, targetNorm: Float) {
        outputScale = 1
        let mean = meanRowNorm(Tensor.withNoGrad { self(sample) })
        outputScale = mean > 0 ? targetNorm / mean : 1
    }
}

/// Mean L2 norm of the rows (last axis) of `m`.
func meanRowNorm(_ m: Tensor) -> Float {
    let cols = m.shape[m.rank - 1], rows = m.count / max(cols, 1)
    var total: Double = 0
    for r in 0..<rows {
        var s: Float = 0
        for j in 0..<cols { s += m.data[r * cols + j] * m.data[r * cols + j] }
        total += Double(s.squareRoot())
    }
    return Float(total / Double(max(rows, 1)))
}
