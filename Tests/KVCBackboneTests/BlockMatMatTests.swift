import XCTest
import KVCCore
import KVCGGUF
@testable import KVCBackbone

/// The batched weight product gives each vector exactly its single-vector product, for every block format and every
/// tile shape (partial tiles, odd counts that leave half a register unused, several passes, uneven splits), so a sequence decodes the same tokens in
/// a batch as alone.
final class BlockMatMatTests: XCTestCase {
    /// Both tile paths: the AVX-512 one where the CPU has it, and the 256-bit one.
    func testEveryRowEqualsTheSingleVectorProductBitForBit() throws {
        let wide = WideTile.enabled
        defer { WideTile.enabled = wide }
        for enabled in wide ? [true, false] : [false] {
            WideTile.enabled = enabled
            try checkEveryRowEqualsTheSingleVectorProduct(label: enabled ? "AVX-512 tiles" : "256-bit tiles")
        }
    }

    private func checkEveryRowEqualsTheSingleVectorProduct(label: String) throws {
        var rng = SeededRandom(seed: 11)
        let types: [GGMLType] = [.q4_1, .q8_0, .f16, .q4_0, .f32]
        let rows = [130, 67, 64, 129, 33], cols = 96
        var writer = GGUFWriter()
        var names: [String] = []
        for (i, (type, r)) in zip(types, rows).enumerated() {
            names.append("m\(i).weight")
            writer.addTensor(names[i], type: type, dims: [cols, r],
                             data: SyntheticModel.randomTensorBytes(type, rows: r, cols: cols, rng: &rng))
        }
        let matrix = try WeightMatrix(file: GGUFFile(bytes: writer.serialize()), tensors: names, expectedRows: rows, cols: cols)
        let total = matrix.rows
        for count in [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33] {
            let x = (0..<(count * cols)).map { _ in rng.nextNormal() * 3 }
            var single = [Float](repeating: 0, count: count * total)
            x.withUnsafeBufferPointer { xp in
                single.withUnsafeMutableBufferPointer { yp in
                    for i in 0..<count { matrix.multiplyVector(xp.baseAddress! + i * cols, into: yp.baseAddress! + i * total, threads: 1) }
                }
            }
            for threads in [1, 2] {
                var batched = [Float](repeating: .nan, count: count * total)
                x.withUnsafeBufferPointer { xp in
                    batched.withUnsafeMutableBufferPointer {
                        BlockMatMat.run(matrix, x: xp.baseAddress!, count: count, y: $0.baseAddress!, threads: threads)
                    }
                }
                for i in 0..<count {
                    let got = batched[(i * total)..<((i + 1) * total)], want = single[(i * total)..<((i + 1) * total)]
                    XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern),
                                   "\(label): vector \(i) of \(count), \(threads) threads: max |Δ| \(zip(got, want).map { abs($0 - $1) }.max()!)")
                }
            }
        }
    }
}
