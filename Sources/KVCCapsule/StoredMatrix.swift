import KVCCore

/// The number format a capsule stores its retained keys or its value factors in.
public enum StoragePrecision: String, Codable, Sendable, CaseIterable {
    /// IEEE half precision, as the full cache.
    case float16 = "f16"
    /// Symmetric int8 with one float16 scale (absmax / 127) per column or per row; the scales are counted in the bytes.
    case int8
}

/// A small row-major float matrix as a capsule keeps it: float16, or int8 with one float16 scale per column
/// (`scalePerRow == false`) or per row. Keys use per-column scales: their channels differ in magnitude by orders of
/// magnitude (RoPE pairs of low frequency carry most of the norm), so a per-channel scale is 3x more accurate than a
/// per-row one at the same bytes for a full span; it also folds into the query (`q·k = (q ⊙ s)·k8`) on the fused path.
public struct StoredMatrix: Equatable, Sendable {
    public let rows: Int
    public let cols: Int
    public let precision: StoragePrecision
    public let scalePerRow: Bool
    /// Float16 bit patterns `[rows, cols]` (float16) — empty for int8.
    public let halves: [UInt16]
    /// `[rows, cols]` (int8) — empty for float16.
    public let int8: [Int8]
    /// Float16 scales, one per column (or per row with `scalePerRow`) — empty for float16.
    public let scales: [UInt16]

    public init(_ x: UnsafeBufferPointer<Float>, rows: Int, cols: Int, precision: StoragePrecision, scalePerRow: Bool = false) {
        precondition(x.count >= rows * cols, "StoredMatrix: \(x.count) values for [\(rows), \(cols)]")
        self.rows = rows
        self.cols = cols
        self.precision = precision
        self.scalePerRow = scalePerRow
        switch precision {
        case .float16:
            halves = HalfConversion.floatToHalf(Array(x[0..<(rows * cols)]))
            int8 = []
            scales = []
        case .int8:
            var absmax = [Float](repeating: 0, count: scalePerRow ? rows : cols)
            for i in 0..<rows {
                for j in 0..<cols {
                    let s = scalePerRow ? i : j
                    absmax[s] = max(absmax[s], abs(x[i * cols + j]))
                }
            }
            // The scale is rounded to float16 first, so the integers fit the scale the reader will actually multiply by.
            let stored = HalfConversion.floatToHalf(absmax.map { $0 > 0 ? $0 / 127 : 1 })
            let used = HalfConversion.halfToFloat(stored).map { $0 > 0 ? $0 : 1 }
            var q = [Int8](repeating: 0, count: rows * cols)
            for i in 0..<rows {
                for j in 0..<cols {
                    let v = (x[i * cols + j] / used[scalePerRow ? i : j]).rounded()
                    q[i * cols + j] = Int8(max(-127, min(127, v.isFinite ? v : 0)))
                }
            }
            halves = []
            int8 = q
            scales = stored
        }
    }

    public init(_ x: [Float], rows: Int, cols: Int, precision: StoragePrecision, scalePerRow: Bool = false) {
        self = x.withUnsafeBufferPointer { StoredMatrix($0, rows: rows, cols: cols, precision: precision, scalePerRow: scalePerRow) }
    }

    /// Bytes held: the elements plus the scales.
    public var byteCount: Int { 2 * halves.count + int8.count + 2 * scales.count }

    /// Bytes a `[rows, cols]` matrix takes at `precision` (the budget's formula; equals `byteCount`).
    public static func bytes(rows: Int, cols: Int, precision: StoragePrecision, scalePerRow: Bool = false) -> Int {
        guard rows > 0 else { return 0 }
        switch precision {
        case .float16: return 2 * rows * cols
        case .int8: return rows * cols + 2 * (scalePerRow ? rows : cols)
        }
    }

    /// The dequantised matrix into `out` (`[rows, cols]`).
    public func dequantize(into out: UnsafeMutablePointer<Float>) {
        switch precision {
        case .float16:
            halves.withUnsafeBufferPointer { HalfConversion.halfToFloat($0.baseAddress!, out, count: rows * cols) }
        case .int8:
            let s = HalfConversion.halfToFloat(scales)
            for i in 0..<rows {
                for j in 0..<cols { out[i * cols + j] = Float(int8[i * cols + j]) * s[scalePerRow ? i : j] }
            }
        }
    }

    public func floats() -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        if rows * cols > 0 { out.withUnsafeMutableBufferPointer { dequantize(into: $0.baseAddress!) } }
        return out
    }
}
