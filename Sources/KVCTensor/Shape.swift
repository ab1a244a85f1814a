// Shape ops: reshape (a free view), permute/transpose, slice, concat, index-select, gather and embedding lookup.
// Everything except reshape materialises a contiguous result, so every other op can assume row-major data.

extension Tensor {
    /// Same values under another shape (one dimension may be -1). A view: no copy.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var s = newShape
        if let unknown = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != unknown }.map(\.element).reduce(1, *)
            shapeCheck(known > 0 && count % known == 0, "reshape", "cannot reshape \(shape) (\(count) elements) to \(newShape)")
            s[unknown] = count / known
        }
        shapeCheck(s.allSatisfy { $0 >= 0 } && s.reduce(1, *) == count, "reshape",
                   "cannot reshape \(shape) (\(count) elements) to \(newShape)")
        let out = Tensor(storage: storage, offset: offset, shape: s)
        let n = count
        out.record([self]) { _, g in
            self.accumulateGrad { gx, overwrite in store(g, into: gx, count: n, overwrite: overwrite) }
        }
        return out
    }

    /// Axes reordered: output axis i is input axis `dims[i]`. Materialises.
    public func permuted(_ dims: [Int]) -> Tensor {
        shapeCheck(dims.count == rank && Set(dims.map { normalizedAxis($0, op: "permute") }).count == rank,
                   "permute", "\(dims) is not a permutation of the axes of shape \(shape)")
        let d = dims.map { normalizedAxis($0, op: "permute") }
        let out = Tensor(uninitializedShape: d.map { shape[$0] })
        let inStrides = Tensor.rowMajorStrides(shape)
        stridedCopy(from: data, strides: d.map { inStrides[$0] }, to: out.data, shape: out.shape, accumulate: false)
        // The backward is the inverse permutation: input axis d[i] is output axis i.
        var inverse = [Int](repeating: 0, count: d.count)
        for (i, axis) in d.enumerated() { inverse[axis] = i }
        let outStrides = Tensor.rowMajorStrides(out.shape)
        out.record([self]) { _, g in
            // Writes the input-shaped gradient in order (reads strided), so no clearing and no scattered writes.
            self.accumulateGrad { gx, overwrite in
                stridedCopy(from: g, strides: inverse.map { outStrides[$0] }, to: gx, shape: self.shape, accumulate: !overwrite)
            }
        }
        return out
    }

    /// Swaps two axes (materialises).
    public func transposed(_ a: Int = -2, _ b: Int = -1) -> Tensor {
        var d = Array(0..<rank)
        d.swapAt(normalizedAxis(a, op: "transpose"), normalizedAxis(b, op: "transpose"))
        return permuted(d)
    }

    /// Elements `range` along `axis`.
    public func slice(axis: Int, _ range: Range<Int>) -> Tensor {
        let ax = normalizedAxis(axis, op: "slice")
        shapeCheck(range.lowerBound >= 0 && range.upperBound <= shape[ax], "slice",
                   "range \(range) is out of bounds for axis \(axis) of shape \(shape)")
        let (outer, n, inner) = splitAround(axis: ax)
        var s = shape
        s[ax] = range.count
        let out = Tensor(uninitializedShape: s)
        let m = range.count * inner, start = range.lowerBound * inner
        for o in 0..<outer { (out.data + o * m).update(from: data + o * n * inner + start, count: m) }
        out.record([self]) { _, g in
            let gx = self.gradBufferForScatter()
            for o in 0..<outer { add(g + o * m, into: gx + o * n * inner + start, count: m) }
        }
        return out
    }

    /// Joins tensors along `axis`; all other dimensions must agree.
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        usageCheck(!tensors.isEmpty, "concat: no tensors")
        let first = tensors[0]
        let ax = first.normalizedAxis(axis, op: "concat")
        for t in tensors {
            var a = t.shape, b = first.shape
            shapeCheck(a.count == b.count, "concat", "shapes \(tensors.map(\.shape)) differ in rank")
            a[ax] = 0; b[ax] = 0
            shapeCheck(a == b, "concat", "shapes \(tensors.map(\.shape)) differ outside axis \(axis)")
        }
        var s = first.shape
        s[ax] = tensors.map { $0.shape[ax] }.reduce(0, +)
        let out = Tensor(uninitializedShape: s)
        let (outer, total, inner) = out.splitAround(axis: ax)
        var start = 0
        var starts: [Int] = []
        for t in tensors {
            starts.append(start)
            let m = t.shape[ax] * inner
            for o in 0..<outer { (out.data + o * total * inner + start * inner).update(from: t.data + o * m, count: m) }
            start += t.shape[ax]
        }
        out.record(tensors) { _, g in
            for (t, st) in zip(tensors, starts) where t.requiresGrad {
                let m = t.shape[ax] * inner
                t.accumulateGrad { gt, overwrite in
                    for o in 0..<outer {
                        store(g + o * total * inner + st * inner, into: gt + o * m, count: m, overwrite: overwrite)
                    }
                }
            }
        }
        return out
    }

    /// Picks entries `indices` along `axis` (repeats allowed): the result has `indices.count` there.
    public func indexSelect(axis: Int, _ indices: [Int]) -> Tensor {
        let ax = normalizedAxis(axis, op: "indexSelect")
        let (outer, n, inner) = splitAround(axis: ax)
        for i in indices {
            shapeCheck(i >= 0 && i < n, "indexSelect", "index \(i) out of range 0..<\(n) for axis \(axis) of shape \(shape)")
        }
        var s = shape
        s[ax] = indices.count
        let out = Tensor(uninitializedShape: s)
        let k = indices.count
        for o in 0..<outer {
            for (j, i) in indices.enumerated() {
                (out.data + (o * k + j) * inner).update(from: data + (o * n + i) * inner, count: inner)
            }
        }
        out.record([self]) { _, g in
            let gx = self.gradBufferForScatter()
            for o in 0..<outer {
                for (j, i) in indices.enumerated() { add(g + (o * k + j) * inner, into: gx + (o * n + i) * inner, count: inner) }
            }
        }
        return out
    }

    /// PyTorch's `gather`: `index` has the output's shape (`indexShape`), equal to this tensor's except along
    /// `axis`; out[..., j, ...] = self[..., index[..., j, ...], ...].
    public func gather(axis: Int, index: [Int], indexShape: [Int]) -> Tensor {
        let ax = normalizedAxis(axis, op: "gather")
        shapeCheck(indexShape.count == rank && index.count == indexShape.reduce(1, *), "gather",
                   "index of shape \(indexShape) (\(index.count) values) does not match rank of \(shape)")
        for d in 0..<rank where d != ax {
            shapeCheck(indexShape[d] == shape[d], "gather", "index shape \(indexShape) differs from \(shape) on axis \(d)")
        }
        let (outer, n, inner) = splitAround(axis: ax)
        let k = indexShape[ax]
        let out = Tensor(uninitializedShape: indexShape)
        var source = [Int](repeating: 0, count: index.count)
        for o in 0..<outer {
            for j in 0..<k {
                for i in 0..<inner {
                    let e = (o * k + j) * inner + i
                    let idx = index[e]
                    shapeCheck(idx >= 0 && idx < n, "gather", "index \(idx) out of range 0..<\(n) on axis \(axis) of \(shape)")
                    source[e] = (o * n + idx) * inner + i
                    out.data[e] = data[source[e]]
                }
            }
        }
        out.record([self]) { _, g in
            let gx = self.gradBufferForScatter()
            for e in 0..<source.count { gx[source[e]] += g[e] }
        }
        return out
    }

    /// Row-major element strides of a shape.
    static func rowMajorStrides(_ shape: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) { s[i] = acc; acc *= shape[i] }
        return s
    }
}

/// Embedding lookup: rows of `weight` [vocab, dim] for each id; the result has shape `idShape + [dim]`.
public func embedding(_ weight: Tensor, ids: [Int], idShape: [Int]? = nil) -> Tensor {
    shapeCheck(weight.rank == 2, "embedding", "weight must be [vocab, dim], got \(weight.shape)")
    let s = idShape ?? [ids.count]
    shapeCheck(s.reduce(1, *) == ids.count, "embedding", "id shape \(s) does not hold \(ids.count) ids")
    return weight.indexSelect(axis: 0, ids).reshaped(s + [weight.shape[1]])
}

/// dst[row-major over `shape`] = src[Σ index·strides] (or += when accumulating).
func stridedCopy(from src: UnsafePointer<Float>, strides: [Int], to dst: UnsafeMutablePointer<Float>, shape: [Int],
                 accumulate: Bool) {
    let total = shape.reduce(1, *)
    if total == 0 { return }
    let rank = shape.count
    if rank == 0 { dst[0] = accumulate ? dst[0] + src[0] : src[0]; return }
    let inner = shape[rank - 1], innerStride = strides[rank - 1]
    var index = [Int](repeating: 0, count: rank)
    var s = 0
    var d = 0
    while d < total {
        if accumulate { for j in 0..<inner { dst[d + j] += src[s + j * innerStride] } }
        else { for j in 0..<inner { dst[d + j] = src[s + j * innerStride] } }
        d += inner
        var axis = rank - 2
        while axis >= 0 {
            index[axis] += 1
            s += strides[axis]
            if index[axis] < shape[axis] { break }
            s -= strides[axis] * shape[axis]
            index[axis] = 0
            axis -= 1
        }
    }
}
