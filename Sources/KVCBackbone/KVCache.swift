import KVCCore

/// How a cache hands one layer's keys and values to attention.
///
/// Layout: **head-major**, `[kvHeads][positions][headDim]`. Head `h`, entry `j` starts at element
/// `h * headStride + j * headDim` of `keys`/`values`. Head-major keeps each head's keys contiguous, so scores are a
/// run of dot products (or one gemm) per head without strided gathers.
public struct KVLayerView {
    /// Element storage of the view. Attention reads both directly; float16 halves the bytes it has to stream.
    public enum Storage {
        case float32(keys: UnsafePointer<Float>, values: UnsafePointer<Float>)
        case float16(keys: UnsafePointer<Float16>, values: UnsafePointer<Float16>)
    }

    public let storage: Storage
    /// Entries held per head (may be fewer than the sequence length when the cache evicts tokens).
    public let count: Int
    /// Elements between the start of consecutive heads (at least `count * headDim`).
    public let headStride: Int
    /// Sequence position of each entry (ascending), or nil when the entries are exactly positions `0..<count`.
    /// Attention masks with them: a query at position p sees entries at positions <= p.
    public let positions: UnsafePointer<Int32>?

    public init(storage: Storage, count: Int, headStride: Int, positions: UnsafePointer<Int32>? = nil) {
        self.storage = storage
        self.count = count
        self.headStride = headStride
        self.positions = positions
    }

    /// Position of entry j.
    @inline(__always) public func position(_ j: Int) -> Int { positions.map { Int($0[j]) } ?? j }
}

/// The decoder's only way to its key/value cache. The attention code is the same for every implementation:
/// the plain float16 cache, the capsule cache and the eviction/quantization baselines.
///
/// Protocol of one forward call over `n` new tokens at positions `length ..< length + n`: for each layer in order,
/// the decoder calls `append(layer:...)` with the layer's new **post-RoPE** keys and its values, then
/// `withLayer` to read everything the layer should attend to (old entries and the new ones). After the last layer,
/// `length` must have grown by `n`. Between forward calls all layers have seen the same positions.
public protocol KVCache: AnyObject {
    var layerCount: Int { get }
    var kvHeadCount: Int { get }
    var headDim: Int { get }
    /// Sequence positions seen so far (the position of the next token), counting evicted ones.
    var length: Int { get }
    /// Appends `count` new positions to a layer. `keys`/`values` are head-major `[kvHeads][count][headDim]`
    /// float32; keys are already rotated to their positions.
    func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int)
    /// Calls `body` with a view of everything the layer holds. The view is valid only inside `body`
    /// (a cache may rebuild it into a reused scratch buffer).
    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R
    /// Forgets every position at or after `length` (for example to re-run from a shared prefix).
    func trim(to length: Int)
    /// Bytes held in memory by the cache (stores plus any scratch it keeps).
    var residentBytes: Int { get }
}

/// The default cache: every position of every layer. Keys and values are stored as IEEE float16 by default (as
/// deployed runtimes do, and the reference all compression ratios are measured against); `.float32` keeps them
/// exact, for reference comparisons. Attention reads either directly.
///
/// Capacity grows geometrically per layer; nothing is allocated per token.
public final class PlainKVCache: KVCache {
    public enum Precision: Sendable { case float16, float32 }

    public let layerCount: Int
    public let kvHeadCount: Int
    public let headDim: Int
    public let precision: Precision
    public private(set) var capacity: Int
    private var keys: [UnsafeMutableRawPointer]
    private var values: [UnsafeMutableRawPointer]
    private var counts: [Int]
    private var elementBytes: Int { precision == .float16 ? 2 : 4 }

    public init(layerCount: Int, kvHeadCount: Int, headDim: Int, precision: Precision = .float16, initialCapacity: Int = 256) {
        precondition(layerCount > 0 && kvHeadCount > 0 && headDim > 0, "PlainKVCache: empty shape")
        self.layerCount = layerCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        self.precision = precision
        capacity = max(1, initialCapacity)
        let bytes = kvHeadCount * capacity * headDim * (precision == .float16 ? 2 : 4)
        keys = (0..<layerCount).map { _ in .allocate(byteCount: bytes, alignment: 64) }
        values = (0..<layerCount).map { _ in .allocate(byteCount: bytes, alignment: 64) }
        counts = [Int](repeating: 0, count: layerCount)
    }

    public convenience init(config: LlamaConfig, precision: Precision = .float16, initialCapacity: Int = 256) {
        self.init(layerCount: config.layerCount, kvHeadCount: config.kvHeadCount, headDim: config.headDim,
                  precision: precision, initialCapacity: initialCapacity)
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    public var length: Int { counts[layerCount - 1] }

    /// Bytes of the positions held (what a compression ratio is measured against, with float16 precision).
    public var storedBytes: Int { counts.reduce(0, +) * kvHeadCount * headDim * 2 * elementBytes }

    public var residentBytes: Int { layerCount * kvHeadCount * capacity * headDim * 2 * elementBytes }

    public func append(layer: Int, keys newKeys: UnsafePointer<Float>, values newValues: UnsafePointer<Float>, count: Int) {
        precondition((0..<layerCount).contains(layer), "PlainKVCache.append: layer \(layer) out of range")
        let old = counts[layer]
        if old + count > capacity { grow(to: old + count) }
        let rowElements = count * headDim
        for h in 0..<kvHeadCount {
            let dst = (h * capacity + old) * headDim
            let src = h * rowElements
            store(newKeys + src, into: keys[layer], at: dst, count: rowElements)
            store(newValues + src, into: values[layer], at: dst, count: rowElements)
        }
        counts[layer] = old + count
    }

    private func store(_ src: UnsafePointer<Float>, into base: UnsafeMutableRawPointer, at element: Int, count: Int) {
        switch precision {
        case .float16:
            HalfConversion.floatToHalf(src, (base + 2 * element).assumingMemoryBound(to: UInt16.self), count: count)
        case .float32:
            (base + 4 * element).assumingMemoryBound(to: Float.self).update(from: src, count: count)
        }
    }

    public func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        precondition((0..<layerCount).contains(layer), "PlainKVCache.withLayer: layer \(layer) out of range")
        let storage: KVLayerView.Storage
        switch precision {
        case .float16:
            storage = .float16(keys: UnsafePointer(keys[layer].assumingMemoryBound(to: Float16.self)),
                               values: UnsafePointer(values[layer].assumingMemoryBound(to: Float16.self)))
        case .float32:
            storage = .float32(keys: UnsafePointer(keys[layer].assumingMemoryBound(to: Float.self)),
                               values: UnsafePointer(values[layer].assumingMemoryBound(to: Float.self)))
        }
        return try body(KVLayerView(storage: storage, count: counts[layer], headStride: capacity * headDim))
    }

    public func trim(to length: Int) {
        precondition(length >= 0, "PlainKVCache.trim: negative length")
        for l in 0..<layerCount { counts[l] = min(counts[l], length) }
    }

    /// Grows every layer to at least `needed` positions (doubling), keeping what is stored.
    private func grow(to needed: Int) {
        var newCapacity = capacity
        while newCapacity < needed { newCapacity *= 2 }
        let e = elementBytes
        for l in 0..<layerCount {
            for store in [0, 1] {
                let old = store == 0 ? keys[l] : values[l]
                let new = UnsafeMutableRawPointer.allocate(byteCount: kvHeadCount * newCapacity * headDim * e, alignment: 64)
                for h in 0..<kvHeadCount {
                    (new + h * newCapacity * headDim * e).copyMemory(from: old + h * capacity * headDim * e,
                                                                     byteCount: counts[l] * headDim * e)
                }
                old.deallocate()
                if store == 0 { keys[l] = new } else { values[l] = new }
            }
        }
        capacity = newCapacity
    }
}
