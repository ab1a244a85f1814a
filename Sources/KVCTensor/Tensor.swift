import Foundation
import KVCCore

// The core of the autodiff library: a float32 tensor, its storage, the tape and `backward()`.
//
// Design in one paragraph. A `Tensor` is a contiguous row-major float32 array with a shape. Its values live in a
// `TensorStorage` that several tensors may share (`reshaped` is a free view). An op computes its output eagerly and,
// when gradients are being recorded and some input requires one, attaches a tape node to the output: the inputs
// (`parents`) and a backward closure that adds the output's gradient, pulled back through the op, into the inputs'
// gradient buffers. `backward()` sorts the graph topologically from the loss and runs those closures in reverse.
// Gradient buffers are allocated once per tensor and reused across steps: `zeroGrad()` only marks them stale, and the
// first contribution after that overwrites instead of adding (BLAS beta = 0), so no step ever clears memory it is
// about to overwrite.
//
// Errors: shape mismatches between tensors are programmer errors and trap (fatalError, see `shapeCheck`) with a message naming
// the op and the shapes. Functions that read user input (files) throw `KVCError` instead.

/// A reference-counted, 64-byte aligned float buffer. Contents start uninitialised.
public final class TensorStorage {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    public init(count: Int) {
        usageCheck(count >= 0, "TensorStorage: negative element count \(count)")
        self.count = count
        if let recycled = StoragePool.shared.take(count: count) {
            pointer = recycled
        } else {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(count, 1) * MemoryLayout<Float>.stride,
                                                       alignment: 64)
            pointer = raw.bindMemory(to: Float.self, capacity: Swift.max(count, 1))
        }
    }

    deinit {
        if !StoragePool.shared.give(pointer, count: count) { pointer.deallocate() }
    }
}

/// Recycles large buffers by exact size. A training step allocates the same activation and gradient sizes every
/// step; without this, each multi-megabyte buffer comes back from the system as fresh pages (glibc serves large
/// blocks with mmap or trims them off the heap), and touching them costs a page fault per 4 KiB — measured at
/// several milliseconds per step of the benchmark MLP. Bounded, so memory is returned once a working set shrinks.
final class StoragePool: @unchecked Sendable {
    static let shared = StoragePool()
    /// Buffers smaller than this go straight to malloc, which recycles them well on its own.
    static let minimumCount = 16 * 1024
    static let capacityBytes = 512 << 20

    private var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
    private var pooledBytes = 0
    private let lock = NSLock()

    func take(count: Int) -> UnsafeMutablePointer<Float>? {
        guard count >= Self.minimumCount else { return nil }
        lock.lock()
        defer { lock.unlock() }
        guard let p = free[count]?.popLast() else { return nil }
        pooledBytes -= count * MemoryLayout<Float>.stride
        return p
    }

    /// Keeps the buffer for reuse; false if the pool is full or the buffer is small (the caller frees it).
    func give(_ p: UnsafeMutablePointer<Float>, count: Int) -> Bool {
        guard count >= Self.minimumCount else { return false }
        let bytes = count * MemoryLayout<Float>.stride
        lock.lock()
        defer { lock.unlock() }
        guard pooledBytes + bytes <= Self.capacityBytes else { return false }
        free[count, default: []].append(p)
        pooledBytes += bytes
        return true
    }
}

public final class Tensor {
    public let shape: [Int]
    /// Number of elements (product of `shape`; 1 for a scalar of shape []).
    public let count: Int
    public let storage: TensorStorage
    /// Element offset of this tensor inside `storage` (non-zero only for views).
    public let offset: Int

    /// Whether gradients flow into this tensor. Set it on leaves (parameters); ops set it on their outputs.
    public var requiresGrad: Bool
    /// Optional label, used in error messages and by `Module` parameter collection.
    public var name: String?

    // Gradient buffer, reused across steps; `gradIsCurrent == false` means its contents are stale.
    private var gradStorage: TensorStorage?
    private var gradIsCurrent = false

    // Tape node: the inputs of the op that produced this tensor and how to pull a gradient back through it.
    fileprivate(set) var parents: [Tensor] = []
    fileprivate var backwardFn: ((Tensor, UnsafePointer<Float>) -> Void)?

    // MARK: Creation

    /// An uninitialised tensor (ops fill it). Use `zeros` when the contents matter.
    public init(uninitializedShape shape: [Int]) {
        usageCheck(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in shape \(shape)")
        self.shape = shape
        count = shape.reduce(1, *)
        storage = TensorStorage(count: count)
        offset = 0
        requiresGrad = false
    }

    /// A view of `storage` (shared, not copied).
    public init(storage: TensorStorage, offset: Int = 0, shape: [Int], requiresGrad: Bool = false) {
        let n = shape.reduce(1, *)
        usageCheck(offset >= 0 && offset + n <= storage.count,
                     "Tensor view: shape \(shape) at offset \(offset) does not fit a storage of \(storage.count)")
        self.shape = shape
        count = n
        self.storage = storage
        self.offset = offset
        self.requiresGrad = requiresGrad
    }

    public convenience init(shape: [Int], values: [Float], requiresGrad: Bool = false) {
        usageCheck(values.count == shape.reduce(1, *),
                     "Tensor(shape:values:): \(values.count) values do not fill shape \(shape)")
        self.init(uninitializedShape: shape)
        values.withUnsafeBufferPointer { src in
            if !src.isEmpty { data.update(from: src.baseAddress!, count: count) }
        }
        self.requiresGrad = requiresGrad
    }

    public convenience init(scalar: Float, requiresGrad: Bool = false) {
        self.init(shape: [], values: [scalar], requiresGrad: requiresGrad)
    }

    public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        filled(shape, with: 0, requiresGrad: requiresGrad)
    }

    public static func filled(_ shape: [Int], with value: Float, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        t.data.initialize(repeating: value, count: t.count)
        t.requiresGrad = requiresGrad
        return t
    }

    /// Normal(0, std²) values drawn from `rng` in row-major order (deterministic under a seed).
    public static func randn(_ shape: [Int], std: Float = 1, rng: inout SeededRandom,
                             requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        for i in 0..<t.count { t.data[i] = rng.nextNormal() * std }
        t.requiresGrad = requiresGrad
        return t
    }

    /// Uniform values in [low, high) drawn from `rng`.
    public static func uniform(_ shape: [Int], low: Float, high: Float, rng: inout SeededRandom,
                               requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        for i in 0..<t.count { t.data[i] = low + (high - low) * rng.nextUniform() }
        t.requiresGrad = requiresGrad
        return t
    }

    // MARK: Access

    /// The first element. Valid while the tensor is alive; ops write outputs through it.
    @inline(__always) public var data: UnsafeMutablePointer<Float> { storage.pointer + offset }

    public var rank: Int { shape.count }

    /// A copy of the values in row-major order.
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// The single value of a one-element tensor.
    public var item: Float {
        usageCheck(count == 1, "Tensor.item: tensor of shape \(shape) has \(count) elements, expected 1")
        return data[0]
    }

    public func dim(_ axis: Int) -> Int { shape[normalizedAxis(axis)] }

    /// Turns a negative axis (-1 = last) into its index, trapping when out of range.
    public func normalizedAxis(_ axis: Int, op: String = "axis") -> Int {
        let a = axis < 0 ? axis + rank : axis
        usageCheck(a >= 0 && a < Swift.max(rank, 1), "\(op): axis \(axis) is out of range for shape \(shape)")
        return a
    }

    /// Same values, no tape: gradients stop here.
    public func detached() -> Tensor { Tensor(storage: storage, offset: offset, shape: shape) }

    /// A fresh copy of the values (no tape).
    public func copy() -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// Overwrites the values (no tape; for optimizers and loading).
    public func assign(_ values: UnsafePointer<Float>) { data.update(from: values, count: count) }

    // MARK: Gradients

    /// The accumulated gradient (a view of the reusable buffer), or nil when nothing has flowed in since `zeroGrad()`.
    public var grad: Tensor? {
        guard gradIsCurrent, let g = gradStorage else { return nil }
        return Tensor(storage: g, shape: shape)
    }

    /// Pointer to the gradient buffer if it holds a current gradient.
    public var gradPointer: UnsafeMutablePointer<Float>? { gradIsCurrent ? gradStorage?.pointer : nil }

    /// Marks the gradient stale without touching memory; the next contribution overwrites it.
    public func zeroGrad() { gradIsCurrent = false }

    /// Drops the gradient buffer itself (frees memory).
    public func releaseGrad() { gradStorage = nil; gradIsCurrent = false }

    /// Adds a contribution to the gradient. `body` gets the buffer and `overwrite`: true when the buffer is stale, so
    /// the contribution must be stored (`=`, BLAS beta 0) rather than added. This avoids clearing buffers every step.
    @inline(__always)
    public func accumulateGrad(_ body: (_ buffer: UnsafeMutablePointer<Float>, _ overwrite: Bool) -> Void) {
        if gradStorage == nil { gradStorage = TensorStorage(count: count) }
        body(gradStorage!.pointer, !gradIsCurrent)
        gradIsCurrent = true
    }

    /// The gradient buffer, zeroed first if stale: for contributions that scatter (+=) into parts of it.
    @inline(__always)
    public func gradBufferForScatter() -> UnsafeMutablePointer<Float> {
        if gradStorage == nil { gradStorage = TensorStorage(count: count) }
        let p = gradStorage!.pointer
        if !gradIsCurrent { p.initialize(repeating: 0, count: count); gradIsCurrent = true }
        return p
    }

    // MARK: Tape

    /// Attaches a tape node to this freshly computed op output if gradients are being recorded and some input needs
    /// one. `backward` receives this tensor and its gradient and must add into the parents' gradients, skipping
    /// parents whose `requiresGrad` is false. It may overwrite the gradient it receives (fused ops mask it in place):
    /// that buffer is discarded as soon as the closure returns.
    public func record(_ parents: [Tensor], backward: @escaping (_ out: Tensor, _ grad: UnsafePointer<Float>) -> Void) {
        guard GradMode.isEnabled, parents.contains(where: { $0.requiresGrad }) else { return }
        requiresGrad = true
        self.parents = parents
        backwardFn = backward
    }

    /// Whether this tensor was produced by a recorded op (as opposed to a leaf).
    public var hasTapeNode: Bool { backwardFn != nil }

    /// Reverse-mode sweep from this tensor. Without `gradient`, the tensor must hold a single value (a loss) and is
    /// seeded with 1. Leaves with `requiresGrad` accumulate into `grad`; the recorded graph is freed afterwards, along
    /// with the gradients of intermediate tensors.
    public func backward(gradient: Tensor? = nil) {
        usageCheck(requiresGrad, "backward: tensor of shape \(shape) does not require a gradient (no parameter "
                     + "with requiresGrad = true reached it, or it was computed under Tensor.withNoGrad)")
        if let gradient {
            usageCheck(gradient.shape == shape,
                         "backward: seed gradient of shape \(gradient.shape) does not match tensor shape \(shape)")
            accumulateGrad { g, overwrite in
                if overwrite { g.update(from: gradient.data, count: count) } else { add(gradient.data, into: g, count: count) }
            }
        } else {
            usageCheck(count == 1, "backward: tensor of shape \(shape) is not a scalar; pass `gradient:`")
            accumulateGrad { g, overwrite in g[0] = overwrite ? 1 : g[0] + 1 }
        }
        for node in topologicalOrder().reversed() {
            guard let fn = node.backwardFn else { continue }
            if let g = node.gradPointer { fn(node, UnsafePointer(g)) }
            // Free the graph as PyTorch does: intermediate nodes and their gradients are not needed any more.
            node.backwardFn = nil
            node.parents = []
            node.releaseGrad()
        }
    }

    /// Nodes reachable from `self` through the tape, every node after all of its parents.
    private func topologicalOrder() -> [Tensor] {
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        // Iterative depth-first search: deep graphs (long sequences of ops) must not overflow the stack.
        var stack: [(Tensor, Int)] = [(self, 0)]
        visited.insert(ObjectIdentifier(self))
        while let (node, next) = stack.popLast() {
            if next < node.parents.count {
                stack.append((node, next + 1))
                let p = node.parents[next]
                if p.requiresGrad, visited.insert(ObjectIdentifier(p)).inserted { stack.append((p, 0)) }
            } else {
                order.append(node)
            }
        }
        return order
    }

    // MARK: No-grad mode

    /// Runs `body` with gradient recording off on this thread: ops compute values and record nothing
    /// (frozen inference, optimizer updates, evaluation).
    public static func withNoGrad<R>(_ body: () throws -> R) rethrows -> R {
        try GradMode.withDisabled(body)
    }
}

/// Per-thread switch for gradient recording.
public enum GradMode {
    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// True unless inside `Tensor.withNoGrad` on this thread.
    public static var isEnabled: Bool { pthread_getspecific(key) == nil }

    public static func withDisabled<R>(_ body: () throws -> R) rethrows -> R {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1))
        defer { pthread_setspecific(key, previous) }
        return try body()
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let shown = count <= 8 ? scalars.map { String(format: "%.4g", $0) }.joined(separator: ", ")
                               : scalars.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ") + ", ..."
        return "Tensor(shape: \(shape), [\(shown)]\(requiresGrad ? ", requiresGrad" : ""))"
    }
}

// MARK: Small raw-buffer kernels shared by the ops

/// y += x
@inline(__always)
func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { y[i] += x[i] }
}

/// y = x (overwrite) or y += x, the two ways a gradient contribution lands.
@inline(__always)
func store(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int, overwrite: Bool) {
    if overwrite { y.update(from: x, count: count) } else { add(x, into: y, count: count) }
}

/// Checks a usage condition (shapes, axes, indices), trapping with the op name and what is wrong.
/// Not `precondition`: in optimised builds (how this project always runs) `precondition` drops its message and
/// traps with a bare "precondition failure"; `fatalError` keeps it, so the trap says which shapes disagreed.
@inline(__always)
func shapeCheck(_ condition: Bool, _ op: @autoclosure () -> String, _ message: @autoclosure () -> String) {
    if _slowPath(!condition) { usageError("\(op()): \(message())") }
}

/// Like `precondition`, but the message survives optimised builds (see `shapeCheck`).
@inline(__always)
func usageCheck(_ condition: Bool, _ message: @autoclosure () -> String) {
    if _slowPath(!condition) { usageError(message()) }
}

@inline(never)
func usageError(_ message: String) -> Never {
    fatalError("KVCTensor: " + message)
}
