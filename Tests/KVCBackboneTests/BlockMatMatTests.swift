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

/// The bfloat16 weight products (`WeightProducts.bfloat16`): close to the float32 products at bfloat16's precision,
/// and still the same result for a vector whatever else shares its tile.
final class BFloat16ProductTests: XCTestCase {
    private func matrix(rows: [Int], cols: Int, rng: inout SeededRandom) throws -> WeightMatrix {
        let types: [GGMLType] = [.q4_1, .q8_0, .q4_0, .f16]
        var writer = GGUFWriter()
        var names: [String] = []
        for (i, r) in rows.enumerated() {
            names.append("m\(i).weight")
            writer.addTensor(names[i], type: types[i % types.count], dims: [cols, r],
                             data: SyntheticModel.randomTensorBytes(types[i % types.count], rows: r, cols: cols, rng: &rng))
        }
        return try WeightMatrix(file: GGUFFile(bytes: writer.serialize()), tensors: names, expectedRows: rows, cols: cols)
    }

    private func product(_ m: WeightMatrix, _ x: [Float], count: Int, products: WeightProducts, threads: Int = 1) -> [Float] {
        var y = [Float](repeating: .nan, count: count * m.rows)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer {
                BlockMatMat.run(m, x: xp.baseAddress!, count: count, y: $0.baseAddress!, threads: threads, products: products)
            }
        }
        return y
    }

    func testProductsAgreeWithFloat32WithinBFloat16Rounding() throws {
        try XCTSkipUnless(BFloat16Tile.supported, "this CPU has no AVX-512 BF16")
        var rng = SeededRandom(seed: 5)
        let cols = 160
        let m = try matrix(rows: [37, 21, 40, 9], cols: cols, rng: &rng)
        let count = 3
        // Hidden states with an outlier channel, as SmolLM2's have: bfloat16 keeps its range.
        var x = (0..<(count * cols)).map { _ in rng.nextNormal() }
        for i in 0..<count { x[i * cols + 17] = 300 }
        let exact = product(m, x, count: count, products: .float32)
        let rounded = product(m, x, count: count, products: .bfloat16)
        // Each product of two bfloat16 roundings errs by at most about 2^-8 of |w·x| term by term.
        let absW = (0..<m.rows).map { r in (0..<cols).map { abs(m.dense[r * cols + $0]) } }
        for v in 0..<count {
            for r in 0..<m.rows {
                let bound = zip(absW[r], x[(v * cols)..<((v + 1) * cols)]).reduce(Float(0)) { $0 + $1.0 * abs($1.1) } / 128
                let got = rounded[v * m.rows + r], want = exact[v * m.rows + r]
                XCTAssertLessThanOrEqual(abs(got - want), bound, "vector \(v), row \(r): \(got) vs \(want)")
            }
        }
        // And the rounding is not a no-op: the two paths differ somewhere.
        XCTAssertNotEqual(exact, rounded)
    }

    func testEveryVectorGetsTheSameResultInAnyTile() throws {
        try XCTSkipUnless(BFloat16Tile.supported, "this CPU has no AVX-512 BF16")
        var rng = SeededRandom(seed: 9)
        let cols = 96
        let m = try matrix(rows: [13, 70, 5], cols: cols, rng: &rng)
        let largest = 17
        let x = (0..<(largest * cols)).map { _ in rng.nextNormal() * 2 }
        var alone: [[Float]] = []
        for v in 0..<largest {
            alone.append(product(m, Array(x[(v * cols)..<((v + 1) * cols)]), count: 1, products: .bfloat16))
        }
        for count in [2, 3, 4, 5, 8, 9, 16, 17] {
            for threads in [1, 2] {
                let batched = product(m, Array(x.prefix(count * cols)), count: count, products: .bfloat16, threads: threads)
                for v in 0..<count {
                    XCTAssertEqual(batched[(v * m.rows)..<((v + 1) * m.rows)].map(\.bitPattern), alone[v].map(\.bitPattern),
                                   "vector \(v) of \(count), \(threads) threads")
                }
            }
        }
    }
}
