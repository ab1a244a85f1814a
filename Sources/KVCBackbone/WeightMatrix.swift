import Dispatch
import KVCCore
import KVCGGUF

/// The weight of a linear map, `rows` (outputs) x `cols` (inputs), kept in two forms:
///
/// - `dense`: float32, row-major `[rows][cols]`, for batched products (prefill) through BLAS gemm;
/// - the file's own **blocks** (Q4_1, Q4_0, Q8_0 or F16 rows, copied from the GGUF) for the single-token
///   product of decoding, which is bound by reading the weights: Q4_1 is 5 bits a weight against float32's 32.
///   `BlockMatVec` dequantizes each block in registers and accumulates in float32, so both forms give the same
///   result up to summation order.
///
/// Several GGUF tensors can be stacked by rows into one matrix (q|k|v, gate|up) so one pass computes them all;
/// each keeps its own block type (mixed-type quantizations stay exact).
final class WeightMatrix: @unchecked Sendable {
    let name: String
    let rows: Int
    let cols: Int
    /// float32 `[rows][cols]`.
    let dense: UnsafeMutablePointer<Float>
    /// Row ranges with their stored block format, in row order, covering `0..<rows`.
    let segments: [BlockSegment]

    /// Loads the named 2-D tensors (each `[cols]` x `rowsOf[i]` in ggml order) and stacks them by rows.
    /// - Throws: `KVCError` naming the tensor when it is missing, not 2-D, or its shape is not `[cols, expectedRows]`.
    init(file: GGUFFile, tensors names: [String], expectedRows: [Int], cols: Int, displayName: String? = nil) throws {
        precondition(names.count == expectedRows.count && !names.isEmpty)
        var infos: [GGUFTensorInfo] = []
        for (name, rows) in zip(names, expectedRows) {
            guard file.hasTensor(name) else {
                throw KVCError.file(file.path, "tensor '\(name)' is missing (expected shape [\(cols), \(rows)])")
            }
            let info = try file.tensor(name)
            guard info.dims == [cols, rows] else {
                throw KVCError.file(file.path, "tensor '\(name)' has shape \(info.dims), expected [\(cols), \(rows)] "
                                    + "(ggml order: inputs, outputs)")
            }
            guard info.type.canDequantize else {
                throw KVCError.file(file.path, "unsupported tensor type \(info.type.name) in tensor '\(name)'")
            }
            infos.append(info)
        }
        self.name = displayName ?? names.joined(separator: "+")
        self.cols = cols
        rows = expectedRows.reduce(0, +)
        dense = .allocate(capacity: rows * cols)
        var segments: [BlockSegment] = []
        var row = 0
        for info in infos {
            let values = try file.dequantize(info)
            (dense + row * cols).update(from: values, count: values.count)
            let rowRange = row..<(row + info.rowCount)
            let format = BlockFormat(info.type)
            if let format {
                segments.append(BlockSegment(rows: rowRange, format: format, copying: file.rawBytes(info)))
            } else {
                // No block kernel for this type (F32, BF16): decode reads the float32 rows.
                segments.append(BlockSegment(rows: rowRange, denseRows: dense + row * cols, cols: cols))
            }
            row += info.rowCount
        }
        self.segments = segments
    }

    deinit {
        dense.deallocate()
        for s in segments where s.ownsData { s.data.deallocate() }
    }

    /// Bytes of the block form (what one decode step streams).
    var blockBytes: Int { segments.reduce(0) { $0 + $1.rows.count * $1.rowBytes } }
    var denseBytes: Int { rows * cols * 4 }

    /// `y[t][rows] = x[t][cols] · Wᵀ` for `count` rows of x, through BLAS (the prefill path).
    func multiply(_ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>) {
        BLAS.gemm(transB: true, m: count, n: rows, k: cols, a: x, b: dense, c: y)
    }

    /// `y[rows] = W · x` reading the stored blocks, split over `threads` threads by rows (the decode path).
    func multiplyVector(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, threads: Int) {
        BlockMatVec.run(self, x: x, y: y, threads: threads)
    }
}

/// The block formats that have a fused dequantize-and-dot kernel.
enum BlockFormat {
    case q4_0, q4_1, q8_0, f16, f32

    init?(_ type: GGMLType) {
        switch type {
        case .q4_0: self = .q4_0
        case .q4_1: self = .q4_1
        case .q8_0: self = .q8_0
        case .f16: self = .f16
        default: return nil
        }
    }

    func rowBytes(cols: Int) -> Int {
        switch self {
        case .q4_0: return cols / 32 * 18
        case .q4_1: return cols / 32 * 20
        case .q8_0: return cols / 32 * 34
        case .f16: return cols * 2
        case .f32: return cols * 4
        }
    }
}

/// Consecutive rows of a `WeightMatrix` in one block format.
struct BlockSegment {
    let rows: Range<Int>
    let format: BlockFormat
    let data: UnsafeMutableRawPointer
    let rowBytes: Int
    let ownsData: Bool

    /// Copies the stored bytes (64-byte aligned) so the model does not keep the file mapped.
    init(rows: Range<Int>, format: BlockFormat, copying bytes: UnsafeRawBufferPointer) {
        self.rows = rows
        self.format = format
        rowBytes = bytes.count / max(rows.count, 1)
        data = .allocate(byteCount: max(bytes.count, 1), alignment: 64)
        if let base = bytes.baseAddress { data.copyMemory(from: base, byteCount: bytes.count) }
        ownsData = true
    }

    /// Rows read from a float32 matrix owned elsewhere.
    init(rows: Range<Int>, denseRows: UnsafeMutablePointer<Float>, cols: Int) {
        self.rows = rows
        format = .f32
        data = UnsafeMutableRawPointer(denseRows)
        rowBytes = cols * 4
        ownsData = false
    }
}
