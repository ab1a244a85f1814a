import XCTest
import KVCCore
import KVCGGUF
@testable import KVCBackbone

/// The fused block kernels of decoding equal the float32 product of the dequantized weights (BLAS), for every
/// block format, for stacked matrices of mixed formats, and however the rows are split between threads.
final class WeightKernelTests: XCTestCase {
    private func check(types: [GGMLType], rows: [Int], cols: Int, threads: [Int]) throws {
        var rng = SeededRandom(seed: 7)
        var w = GGUFWriter()
        var names: [String] = []
        for (i, (type, r)) in zip(types, rows).enumerated() {
            let name = "m\(i).weight"
            w.addTensor(name, type: type, dims: [cols, r], data: SyntheticModel.randomTensorBytes(type, rows: r, cols: cols, rng: &rng))
            names.append(name)
        }
        let file = try GGUFFile(bytes: w.serialize())
        let matrix = try WeightMatrix(file: file, tensors: names, expectedRows: rows, cols: cols)
        // The dense rows are the gguf reader's dequantization: an independent check of what the blocks mean.
        for (name, offset) in zip(names, rows.indices.map { rows[..<$0].reduce(0, +) }) {
            let reference = try file.dequantize(name)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: matrix.dense + offset * cols, count: reference.count)), reference)
        }
        let x = (0..<cols).map { _ in rng.nextNormal() }
        let total = rows.reduce(0, +)
        var expected = [Float](repeating: 0, count: total)
        x.withUnsafeBufferPointer { xp in expected.withUnsafeMutableBufferPointer { matrix.multiply(xp.baseAddress!, count: 1, into: $0.baseAddress!) } }
        for t in threads {
            var got = [Float](repeating: .nan, count: total)
            x.withUnsafeBufferPointer { xp in got.withUnsafeMutableBufferPointer { matrix.multiplyVector(xp.baseAddress!, into: $0.baseAddress!, threads: t) } }
            for r in 0..<total {
                // Only summation order differs: allow float32 rounding of the sum of absolute terms.
                var magnitude: Float = 0
                for j in 0..<cols { magnitude += abs(matrix.dense[r * cols + j] * x[j]) }
                XCTAssertEqual(got[r], expected[r], accuracy: 1e-5 * magnitude + 1e-6, "row \(r) of \(types.map(\.name)) with \(t) threads")
            }
        }
    }

    func testEachFormat() throws {
        for type in [GGMLType.q4_0, .q4_1, .q8_0, .f16, .f32, .bf16] where type != .bf16 {
            try check(types: [type], rows: [197], cols: 96, threads: [1, 2, 3])
        }
    }

    func testStackedMixedFormats() throws {
        try check(types: [.q4_1, .q8_0, .f16, .q4_0], rows: [130, 67, 64, 129], cols: 64, threads: [1, 2, 4])
    }
}
