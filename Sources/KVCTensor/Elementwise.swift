import Foundation

// Elementwise arithmetic with NumPy broadcasting, and the pointwise math functions.
//
// Broadcasting: shapes are aligned on the right; each pair of dimensions must be equal or one of them 1.
// The backward of a broadcast input sums the gradient over the dimensions it was broadcast along.

/// How two shapes broadcast: the output shape and, for each input, its element strides over the output's axes
/// (0 along broadcast axes).
struct BroadcastPlan {
    let outShape: [Int]
    let aStrides: [Int]
    let bStrides: [Int]
    let count: Int

    init(_ a: [Int], _ b: [Int], op: String) {
        let rank = max(a.count, b.count)
        let pa = Array(repeating: 1, count: rank - a.count) + a
        let pb = Array(repeating: 1, count: rank - b.count) + b
        var out = [Int](repeating: 1, count: rank)
        for i in 0..<rank {
            shapeCheck(pa[i] == pb[i] || pa[i] == 1 || pb[i] == 1, op,
                       "shapes \(a) and \(b) do not broadcast (axis \(i) of the right-aligned shapes: \(pa[i]) vs \(pb[i]))")
            out[i] = pa[i] == 1 ? pb[i] : pa[i]
        }
        outShape = out
        aStrides = BroadcastPlan.strides(pa, out)
        bStrides = BroadcastPlan.strides(pb, out)
        count = out.reduce(1, *)
    }

    private static func strides(_ padded: [Int], _ out: [Int]) -> [Int] {
        var s = [Int](repeating: 0, count: out.count)
        var acc = 1
        for i in stride(from: out.count - 1, through: 0, by: -1) {
            s[i] = padded[i] == 1 && out[i] != 1 ? 0 : acc
            acc *= padded[i]
        }
        return s
    }

    /// Calls `body(outIndex, aIndex, bIndex, n, aStep, bStep)` for each run of the innermost axis.
    @inline(__always)
    func forEachRow(_ body: (Int, Int, Int, Int, Int, Int) -> Void) {
        let rank = outShape.count
        if rank == 0 { body(0, 0, 0, 1, 0, 0); return }
        let inner = outShape[rank - 1]
        if inner == 0 || count == 0 { return }
        let rows = count / inner
        var index = [Int](repeating: 0, count: rank)
        var ai = 0, bi = 0
        for row in 0..<rows {
            body(row * inner, ai, bi, inner, aStrides[rank - 1], bStrides[rank - 1])
            // Odometer increment over the outer axes.
            var axis = rank - 2
            while axis >= 0 {
                index[axis] += 1
                ai += aStrides[axis]
                bi += bStrides[axis]
                if index[axis] < outShape[axis] { break }
                ai -= aStrides[axis] * outShape[axis]
                bi -= bStrides[axis] * outShape[axis]
                index[axis] = 0
                axis -= 1
            }
        }
    }
}

/// The four arithmetic operators share one implementation, specialised per operator through this protocol so every
/// loop compiles to straight vector code: forward value and the two partial derivatives (times the gradient g).
protocol BinaryKernel {
    static var name: String { get }
    static func apply(_ a: Float, _ b: Float) -> Float
    /// ∂(a op b)/∂a · g
    static func gradA(_ g: Float, _ a: Float, _ b: Float) -> Float
    /// ∂(a op b)/∂b · g
    static func gradB(_ g: Float, _ a: Float, _ b: Float) -> Float
}

enum AddKernel: BinaryKernel {
    static let name = "add"
    @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a + b }
    @inline(__always) static func gradA(_ g: Float, _ a: Float, _ b: Float) -> Float { g }
    @inline(__always) static func gradB(_ g: Float, _ a: Float, _ b: Float) -> Float { g }
}

enum SubKernel: BinaryKernel {
    static let name = "sub"
    @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a - b }
    @inline(__always) static func gradA(_ g: Float, _ a: Float, _ b: Float) -> Float { g }
    @inline(__always) static func gradB(_ g: Float, _ a: Float, _ b: Float) -> Float { -g }
}

enum MulKernel: BinaryKernel {
    static let name = "mul"
    @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a * b }
    @inline(__always) static func gradA(_ g: Float, _ a: Float, _ b: Float) -> Float { g * b }
    @inline(__always) static func gradB(_ g: Float, _ a: Float, _ b: Float) -> Float { g * a }
}

enum DivKernel: BinaryKernel {
    static let name = "div"
    @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a / b }
    @inline(__always) static func gradA(_ g: Float, _ a: Float, _ b: Float) -> Float { g / b }
    @inline(__always) static func gradB(_ g: Float, _ a: Float, _ b: Float) -> Float { -g * a / (b * b) }
}

func binary<K: BinaryKernel>(_ a: Tensor, _ b: Tensor, _ kernel: K.Type) -> Tensor {
    if a.shape == b.shape { return sameShapeBinary(a, b, kernel) }
    let plan = BroadcastPlan(a.shape, b.shape, op: K.name)
    // A row (bias, norm weight, ...) repeated over the leading axes of a full operand: the common broadcast.
    if plan.outShape == a.shape && isTrailingRow(b.shape, of: a.shape) { return rowBroadcastBinary(a, b, rowIsB: true, kernel) }
    if plan.outShape == b.shape && isTrailingRow(a.shape, of: b.shape) { return rowBroadcastBinary(a, b, rowIsB: false, kernel) }

    let out = Tensor(uninitializedShape: plan.outShape)
    let pa = a.data, pb = b.data, po = out.data
    plan.forEachRow { o, ai, bi, n, sa, sb in
        for j in 0..<n { po[o + j] = K.apply(pa[ai + j * sa], pb[bi + j * sb]) }
    }
    out.record([a, b]) { out, g in
        let pa = a.data, pb = b.data
        if a.requiresGrad {
            let ga = a.gradBufferForScatter()
            plan.forEachRow { o, ai, bi, n, sa, sb in
                for j in 0..<n { ga[ai + j * sa] += K.gradA(g[o + j], pa[ai + j * sa], pb[bi + j * sb]) }
            }
        }
        if b.requiresGrad {
            let gb = b.gradBufferForScatter()
            plan.forEachRow { o, ai, bi, n, sa, sb in
                for j in 0..<n { gb[bi + j * sb] += K.gradB(g[o + j], pa[ai + j * sa], pb[bi + j * sb]) }
            }
        }
    }
    return out
}

/// Whether `small`, leading 1s aside, equals the last axes of `full` (so it repeats every `small.count` elements).
private func isTrailingRow(_ small: [Int], of full: [Int]) -> Bool {
    let trimmed = Array(small.drop { $0 == 1 })
    return trimmed.count <= full.count && Array(full.suffix(trimmed.count)) == trimmed && small.count <= full.count
}

/// full op row (or row op full), the row repeated over the leading axes.
private func rowBroadcastBinary<K: BinaryKernel>(_ a: Tensor, _ b: Tensor, rowIsB: Bool, _: K.Type) -> Tensor {
    let full = rowIsB ? a : b, row = rowIsB ? b : a
    let out = Tensor(uninitializedShape: full.shape)
    let r = row.count, rows = r == 0 ? 0 : full.count / r
    let pf = full.data, pr = row.data, po = out.data
    for i in 0..<rows {
        let f = pf + i * r, o = po + i * r
        if rowIsB { for j in 0..<r { o[j] = K.apply(f[j], pr[j]) } } else { for j in 0..<r { o[j] = K.apply(pr[j], f[j]) } }
    }
    out.record([a, b]) { _, g in
        let pf = full.data, pr = row.data
        if full.requiresGrad {
            full.accumulateGrad { gf, overwrite in
                for i in 0..<rows {
                    let f = pf + i * r, gi = g + i * r, d = gf + i * r
                    switch (rowIsB, overwrite) {
                    case (true, true): for j in 0..<r { d[j] = K.gradA(gi[j], f[j], pr[j]) }
                    case (true, false): for j in 0..<r { d[j] += K.gradA(gi[j], f[j], pr[j]) }
                    case (false, true): for j in 0..<r { d[j] = K.gradB(gi[j], pr[j], f[j]) }
                    case (false, false): for j in 0..<r { d[j] += K.gradB(gi[j], pr[j], f[j]) }
                    }
                }
            }
        }
        if row.requiresGrad {
            let gr = row.gradBufferForScatter()  // row-sized, cheap to clear
            for i in 0..<rows {
                let f = pf + i * r, gi = g + i * r
                if rowIsB { for j in 0..<r { gr[j] += K.gradB(gi[j], f[j], pr[j]) } }
                else { for j in 0..<r { gr[j] += K.gradA(gi[j], pr[j], f[j]) } }
            }
        }
    }
    return out
}

/// The common case without broadcasting: straight loops the compiler vectorises.
private func sameShapeBinary<K: BinaryKernel>(_ a: Tensor, _ b: Tensor, _: K.Type) -> Tensor {
    let out = Tensor(uninitializedShape: a.shape)
    let n = out.count, pa = a.data, pb = b.data, po = out.data
    for i in 0..<n { po[i] = K.apply(pa[i], pb[i]) }
    out.record([a, b]) { _, g in
        let pa = a.data, pb = b.data
        if a.requiresGrad {
            a.accumulateGrad { ga, overwrite in
                if overwrite { for i in 0..<n { ga[i] = K.gradA(g[i], pa[i], pb[i]) } }
                else { for i in 0..<n { ga[i] += K.gradA(g[i], pa[i], pb[i]) } }
            }
        }
        if b.requiresGrad {
            b.accumulateGrad { gb, overwrite in
                if overwrite { for i in 0..<n { gb[i] = K.gradB(g[i], pa[i], pb[i]) } }
                else { for i in 0..<n { gb[i] += K.gradB(g[i], pa[i], pb[i]) } }
            }
        }
    }
    return out
}

public func + (a: Tensor, b: Tensor) -> Tensor { binary(a, b, AddKernel.self) }
public func - (a: Tensor, b: Tensor) -> Tensor { binary(a, b, SubKernel.self) }
public func * (a: Tensor, b: Tensor) -> Tensor { binary(a, b, MulKernel.self) }
public func / (a: Tensor, b: Tensor) -> Tensor { binary(a, b, DivKernel.self) }

public func + (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: s) }
public func - (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: -s) }
public func * (a: Tensor, s: Float) -> Tensor { a.affine(scale: s, shift: 0) }
public func / (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1 / s, shift: 0) }
public func * (s: Float, a: Tensor) -> Tensor { a.affine(scale: s, shift: 0) }
public func + (s: Float, a: Tensor) -> Tensor { a.affine(scale: 1, shift: s) }
public func - (s: Float, a: Tensor) -> Tensor { a.affine(scale: -1, shift: s) }
public prefix func - (a: Tensor) -> Tensor { a.affine(scale: -1, shift: 0) }

extension Tensor {
    /// scale * x + shift, elementwise.
    public func affine(scale: Float, shift: Float) -> Tensor {
        unaryOp(self, { scale * $0 + shift }, derivative: { _, _ in scale })
    }

    public func exp() -> Tensor { unaryOp(self, { Foundation.exp($0) }, derivative: { _, y in y }) }
    public func log() -> Tensor { unaryOp(self, { Foundation.log($0) }, derivative: { x, _ in 1 / x }) }
    public func sqrt() -> Tensor { unaryOp(self, { $0.squareRoot() }, derivative: { _, y in 0.5 / y }) }
    public func square() -> Tensor { unaryOp(self, { $0 * $0 }, derivative: { x, _ in 2 * x }) }
    /// x^p for a constant exponent.
    public func pow(_ p: Float) -> Tensor {
        unaryOp(self, { Foundation.pow($0, p) }, derivative: { x, _ in p * Foundation.pow(x, p - 1) })
    }
}

/// A pointwise op y = f(x) with dy/dx = derivative(x, y). Inlined so each use gets its own vectorisable loop.
@inline(__always)
func unaryOp(_ x: Tensor, _ f: (Float) -> Float,
             derivative: @escaping (_ x: Float, _ y: Float) -> Float) -> Tensor {
    let out = Tensor(uninitializedShape: x.shape)
    let n = x.count, px = x.data, po = out.data
    for i in 0..<n { po[i] = f(px[i]) }
    out.record([x]) { out, g in
        let px = x.data, py = out.data
        x.accumulateGrad { gx, overwrite in
            if overwrite { for i in 0..<n { gx[i] = g[i] * derivative(px[i], py[i]) } }
            else { for i in 0..<n { gx[i] += g[i] * derivative(px[i], py[i]) } }
        }
    }
    return out
}
