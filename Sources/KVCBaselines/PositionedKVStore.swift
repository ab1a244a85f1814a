import KVCBackbone
import KVCCore

/// Float16 keys and values of every layer with the sequence position of each entry, so a layer may hold fewer
/// entries than the sequence (evicted tokens) and layers may differ in what they hold (FastV keeps all image tokens
/// in its first layers only). Entries stay in ascending position order; attention reads them in place through a
/// `KVLayerView` with `positions`.
///
/// Layout per layer: head-major `[kvHeads][capacity][headDim]`; capacity doubles when full, nothing is allocated
/// per token.
final class PositionedKVStore {
    let layerCount: Int
    let kvHeadCount: Int
    let headDim: Int

    /// A class, so that its keys and values can be written at the same time (distinct stored properties).
    private final class Layer {
        var keys: [UInt16]
        var values: [UInt16]
        var positions: [Int32]
        var capacity: Int
        init(keys: [UInt16], values: [UInt16], positions: [Int32], capacity: Int) {
            self.keys = keys
            self.values = values
            self.positions = positions
            self.capacity = capacity
        }
    }
    private var layers: [Layer]

    init(layerCount: Int, kvHeadCount: Int, headDim: Int, initialCapacity: Int = 256) {
        self.layerCount = layerCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim
        let c = max(1, initialCapacity)
        layers = (0..<layerCount).map { _ in
            Layer(keys: [UInt16](repeating: 0, count: kvHeadCount * c * headDim),
                  values: [UInt16](repeating: 0, count: kvHeadCount * c * headDim), positions: [], capacity: c)
        }
    }

    func count(layer: Int) -> Int { layers[layer].positions.count }
    func positions(layer: Int) -> [Int32] { layers[layer].positions }

    /// Bytes of the entries held (float16 keys and values), all layers.
    var storedBytes: Int { layers.reduce(0) { $0 + $1.positions.count } * kvHeadCount * headDim * 2 * 2 }
    /// Bytes allocated, all layers (capacity, not just entries).
    var residentBytes: Int { layers.reduce(0) { $0 + ($1.keys.count + $1.values.count) * 2 + $1.positions.count * 4 } }

    /// Appends `count` entries at positions `firstPosition...` from head-major float32 `[kvHeads][count][headDim]`.
    func append(layer l: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int, firstPosition: Int) {
        let old = layers[l].positions.count
        reserve(layer: l, entries: old + count)
        let layer = layers[l], d = headDim, cap = layer.capacity
        layer.keys.withUnsafeMutableBufferPointer { k in
            layer.values.withUnsafeMutableBufferPointer { v in
                for h in 0..<kvHeadCount {
                    HalfConversion.floatToHalf(keys + h * count * d, k.baseAddress! + (h * cap + old) * d, count: count * d)
                    HalfConversion.floatToHalf(values + h * count * d, v.baseAddress! + (h * cap + old) * d, count: count * d)
                }
            }
        }
        layer.positions += (firstPosition..<(firstPosition + count)).map { Int32($0) }
    }

    /// Forgets every entry at position `length` or later, in every layer.
    func trim(to length: Int) {
        for l in 0..<layerCount {
            let keep = layers[l].positions.partitioningIndex { Int($0) >= length }
            layers[l].positions.removeLast(layers[l].positions.count - keep)
        }
    }

    /// Keys and values of the entries at `indices` (into the layer), as float32 head-major `[kvHeads][indices][headDim]`.
    func gather(layer l: Int, indices: [Int]) -> (keys: [Float], values: [Float]) {
        let layer = layers[l], d = headDim, n = indices.count, cap = layer.capacity
        var keys = [Float](repeating: 0, count: kvHeadCount * n * d), values = keys
        layer.keys.withUnsafeBufferPointer { k in
            layer.values.withUnsafeBufferPointer { v in
                keys.withUnsafeMutableBufferPointer { ko in
                    values.withUnsafeMutableBufferPointer { vo in
                        for h in 0..<kvHeadCount {
                            for (j, i) in indices.enumerated() {
                                HalfConversion.halfToFloat(k.baseAddress! + (h * cap + i) * d, ko.baseAddress! + (h * n + j) * d, count: d)
                                HalfConversion.halfToFloat(v.baseAddress! + (h * cap + i) * d, vo.baseAddress! + (h * n + j) * d, count: d)
                            }
                        }
                    }
                }
            }
        }
        return (keys, values)
    }

    /// Replaces the entries at `removed` (indices into the layer) by `inserted` entries at `positions` (ascending;
    /// keys/values float32 head-major `[kvHeads][positions][headDim]`), keeping position order.
    func replace(layer l: Int, removed: [Int], positions newPositions: [Int32], keys: [Float], values: [Float]) {
        let d = headDim, m = newPositions.count
        let old = layers[l], oldCount = old.positions.count
        let gone = Set(removed)
        let kept = (0..<oldCount).filter { !gone.contains($0) }
        let newInHalf = (HalfConversion.floatToHalf(keys), HalfConversion.floatToHalf(values))
        let total = kept.count + m, capacity = max(total, 1)
        // Merge the surviving entries and the inserted ones by position.
        var order: [(fromOld: Bool, index: Int)] = []
        order.reserveCapacity(total)
        var a = 0, b = 0
        while a < kept.count || b < m {
            if b == m || (a < kept.count && old.positions[kept[a]] < newPositions[b]) {
                order.append((true, kept[a])); a += 1
            } else {
                order.append((false, b)); b += 1
            }
        }
        var freshKeys = [UInt16](repeating: 0, count: kvHeadCount * capacity * d), freshValues = freshKeys
        let oldKeys = old.keys, oldValues = old.values
        for h in 0..<kvHeadCount {
            for (slot, e) in order.enumerated() {
                let dst = (h * capacity + slot) * d
                let src = e.fromOld ? (h * old.capacity + e.index) * d : (h * m + e.index) * d
                for x in 0..<d {
                    freshKeys[dst + x] = e.fromOld ? oldKeys[src + x] : newInHalf.0[src + x]
                    freshValues[dst + x] = e.fromOld ? oldValues[src + x] : newInHalf.1[src + x]
                }
            }
        }
        let fresh = Layer(keys: freshKeys, values: freshValues,
                          positions: order.map { $0.fromOld ? old.positions[$0.index] : newPositions[$0.index] },
                          capacity: capacity)
        layers[l] = fresh
    }

    func withLayer<R>(_ l: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        let layer = layers[l]
        return try layer.keys.withUnsafeBufferPointer { k in
            try layer.values.withUnsafeBufferPointer { v in
                try layer.positions.withUnsafeBufferPointer { p in
                    try k.withMemoryRebound(to: Float16.self) { k16 in
                        try v.withMemoryRebound(to: Float16.self) { v16 in
                            try body(KVLayerView(storage: .float16(keys: k16.baseAddress!, values: v16.baseAddress!),
                                                 count: layer.positions.count, headStride: layer.capacity * headDim,
                                                 positions: p.baseAddress))
                        }
                    }
                }
            }
        }
    }

    private func reserve(layer l: Int, entries needed: Int) {
        let old = layers[l]
        guard needed > old.capacity else { return }
        var capacity = old.capacity
        while capacity < needed { capacity *= 2 }
        let d = headDim, n = old.positions.count
        var keys = [UInt16](repeating: 0, count: kvHeadCount * capacity * d), values = keys
        for h in 0..<kvHeadCount {
            keys[(h * capacity * d)..<((h * capacity + n) * d)] = old.keys[(h * old.capacity * d)..<((h * old.capacity + n) * d)]
            values[(h * capacity * d)..<((h * capacity + n) * d)] = old.values[(h * old.capacity * d)..<((h * old.capacity + n) * d)]
        }
        layers[l] = Layer(keys: keys, values: values, positions: old.positions, capacity: capacity)
    }
}

extension Array {
    /// Index of the first element for which `belongsToSecondPartition` holds, in an array partitioned by it.
    func partitioningIndex(where belongsToSecondPartition: (Element) -> Bool) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) / 2
            if belongsToSecondPartition(self[mid]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}
