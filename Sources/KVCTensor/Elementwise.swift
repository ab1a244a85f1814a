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

/// The four arithmetic operators share one implementation; the enum picks forward value and partial derivatives.
enum BinaryOp {
    case add, sub, mul, div

    var name: String {
        switch self {
        case .add: return "add"
        case .sub: return "sub"
        case .mul: return "mul"
        case .div: return "div"
        }
    }

    @inline(__always) func apply(_ a: Float, _ b: Float) -> Float {
        switch self {
        case .add: return a + b
        case .sub: return a - b
        case .mul: return a * b
        case .div: return a / b
        }
    }
    /// ∂(a op b)/∂a times g
    @inline(__always) func gradA(_ g: Float, _ a: Float, _ b: Float) -> Float {
        switch self {
        case .add, .sub: return g
        case .mul: return g * b
        case .div: return g / b
        }
    }
    /// ∂(a op b)/∂b times g
    @inline(__always) func gradB(_ g: Float, _ a: Float, _ b: Float) -> Float {
        switch self {
        case .add: return g
        case .sub: return -g
        case .mul: return g * a
        case .div: return -g * a / (b * b)
        }
    }
}

func binary(_ a: Tensor, _ b: Tensor, _ op: BinaryOp) -> Tensor {
    if a.shape == b.shape { return sameShapeBinary(a, b, op) }
    let plan = BroadcastPlan(a.shape, b.shape, op: op.name)
    let out = Tensor(uninitializedShape: plan.outShape)
    let pa = a.data, pb = b.data, po = out.data
    plan.forEachRow { o, ai, bi, n, sa, sb in
        for j in 0..<n { po[o + j] = op.apply(pa[ai + j * sa], pb[bi + j * sb]) }
    }
    out.record([a, b]) { out, g in
        let pa = a.data, pb = b.data
        if a.requiresGrad {
            let ga = a.gradBufferForScatter()
            plan.forEachRow { o, ai, bi, n, sa, sb in
                for j in 0..<n { ga[ai + j * sa] += op.gradA(g[o + j], pa[ai + j * sa], pb[bi + j * sb]) }
            }
        }
        if b.requiresGrad {
            let gb = b.gradBufferForScatter()
            plan.forEachRow { o, ai, bi, n, sa, sb in
                for j in 0..<n { gb[bi + j * sb] += op.gradB(g[o + j], pa[ai + j * sa], pb[bi + j * sb]) }
            }
        }
    }
    return out
}

/// The common case without broadcasting: straight loops the compiler vectorises.
private func sameShapeBinary(_ a: Tensor, _ b: Tensor, _ op: BinaryOp) -> Tensor {
    let out = Tensor(uninitializedShape: a.shape)
    let n = out.count, pa = a.data, pb = b.data, po = out.data
    switch op {
    case .add: for i in 0..<n { po[i] = pa[i] + pb[i] }
    case .sub: for i in 0..<n { po[i] = pa[i] - pb[i] }
    case .mul: for i in 0..<n { po[i] = pa[i] * pb[i] }
    case .div: for i in 0..<n { po[i] = pa[i] / pb[i] }
    }
    out.record([a, b]) { out, g in
        let pa = a.data, pb = b.data
        if a.requiresGrad {
            a.accumulateGrad { ga, overwrite in
                switch op {
                case .add, .sub: store(g, into: ga, count: n, overwrite: overwrite)
                case .mul, .div:
                    if overwrite { for i in 0..<n { ga[i] = op.gradA(g[i], pa[i], pb[i]) } }
                    else { for i in 0..<n { ga[i] += op.gradA(g[i], pa[i], pb[i]) } }
                }
            }
        }
        if b.requiresGrad {
            b.accumulateGrad { gb, overwrite in
                if overwrite { for i in 0..<n { gb[i] = op.gradB(g[i], pa[i], pb[i]) } }
                else { for i in 0..<n { gb[i] += op.gradB(g[i], pa[i], pb[i]) } }
            }
        }
    }
    return out
}

public func + (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .add) }
public func - (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .sub) }
public func * (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .mul) }
public func / (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .div) }

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
