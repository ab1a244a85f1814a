import Foundation
import KVCCore

// A minimal module system: anything that can list its named parameters can be optimised, saved and loaded.

public protocol Module: AnyObject {
    /// Parameters under dotted names ("layers.0.weight"), in a stable order.
    var namedParameters: [(name: String, tensor: Tensor)] { get }
}

extension Module {
    public var parameters: [Tensor] { namedParameters.map(\.tensor) }
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }
    public func zeroGrad() { for p in parameters { p.zeroGrad() } }

    /// Writes the parameters as a safetensors file (atomically), stored as F32, F16 or BF16.
    public func save(to path: String, dtype: SafetensorsDType = .f32, metadata: [String: String] = [:]) throws {
        var writer = SafetensorsWriter(metadata: metadata)
        for (name, t) in namedParameters {
            try writer.add(name, floats: t.scalars, shape: t.shape, dtype: dtype)
        }
        try writer.write(to: path)
    }

    /// Loads parameters saved by `save` (or by Python's safetensors) into the existing tensors, converting
    /// F16/BF16/F64 to float32. Strict: every parameter must be present with its shape, and the file may hold
    /// nothing else. Nothing is modified unless the whole file checks out.
    public func load(from path: String) throws {
        let file = try SafetensorsFile(path: path)
        let named = namedParameters
        let expected = Set(named.map(\.name))
        let unexpected = file.names.filter { !expected.contains($0) }.sorted()
        if !unexpected.isEmpty {
            throw KVCError.file(path, "unexpected tensors \(unexpected) (this module has \(named.map(\.name)))")
        }
        var values: [[Float]] = []
        for (name, t) in named {
            guard file.contains(name) else { throw KVCError.file(path, "missing tensor '\(name)' (shape \(t.shape))") }
            let info = try file.info(name)
            guard info.shape == t.shape else {
                throw KVCError.file(path, "tensor '\(name)' has shape \(info.shape), this module expects \(t.shape)")
            }
            values.append(try file.floats(name))
        }
        for ((_, t), v) in zip(named, values) { v.withUnsafeBufferPointer { t.assign($0.baseAddress!) } }
    }
}

/// y = x·Wᵀ + b with W [out, in] (PyTorch layout). Initialised as PyTorch's `nn.Linear`: U(-1/√in, 1/√in).
public final class Linear: Module {
    public let weight: Tensor
    public let bias: Tensor?

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, rng: inout SeededRandom) {
        let bound = 1 / Float(max(inFeatures, 1)).squareRoot()
        weight = Tensor.uniform([outFeatures, inFeatures], low: -bound, high: bound, rng: &rng, requiresGrad: true)
        self.bias = bias ? Tensor.uniform([outFeatures], low: -bound, high: bound, rng: &rng, requiresGrad: true) : nil
    }

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        [("weight", weight)] + (bias.map { [("bias", $0)] } ?? [])
    }

    public func callAsFunction(_ x: Tensor, activation: Activation = .identity) -> Tensor {
        linear(x, weight: weight, bias: bias, activation: activation)
    }
}

public enum Activation: String, CaseIterable, Sendable {
    case relu, gelu, silu, tanh, sigmoid, identity

    public func apply(_ x: Tensor) -> Tensor {
        switch self {
        case .relu: return x.relu()
        case .gelu: return x.gelu()
        case .silu: return x.silu()
        case .tanh: return x.tanh()
        case .sigmoid: return x.sigmoid()
        case .identity: return x
        }
    }
}

/// Linear layers with an activation between them (none after the last). `sizes` = [in, hidden..., out].
public final class MLP: Module {
    public let layers: [Linear]
    public let activation: Activation

    public init(sizes: [Int], activation: Activation = .relu, rng: inout SeededRandom) {
        usageCheck(sizes.count >= 2, "MLP: sizes \(sizes) needs at least [in, out]")
        var layers: [Linear] = []
        for i in 0..<(sizes.count - 1) { layers.append(Linear(sizes[i], sizes[i + 1], rng: &rng)) }
        self.layers = layers
        self.activation = activation
    }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        layers.enumerated().flatMap { i, layer in layer.namedParameters.map { ("layers.\(i).\($0.name)", $0.tensor) } }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for (i, layer) in layers.enumerated() {
            h = layer(h, activation: i + 1 < layers.count ? activation : .identity)
        }
        return h
    }
}
