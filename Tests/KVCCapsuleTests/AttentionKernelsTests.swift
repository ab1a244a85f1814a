import CDecodeKernels
import Foundation
import KVCCore
import XCTest
@testable import KVCCapsule

/// The C kernels of decode attention (AttentionKernels.c) against the Swift loops they replace, on random data with
/// counts and widths that are not whole vector chunks.
final class AttentionKernelsTests: XCTestCase {
    private var rng = SeededRandom(seed: 11)

    private func randomInt8(_ count: Int) -> [Int8] { (0..<count).map { _ in Int8(Int(rng.next() % 255) - 127) } }
    private func randomFloats(_ count: Int, scale: Float = 1) -> [Float] { (0..<count).map { _ in rng.nextNormal() * scale } }

    private func assertClose(_ a: [Float], _ b: [Float], relative: Float, _ message: String, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, message, line: line)
        let top = max(b.map(abs).max() ?? 0, 1e-30)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst / top, relative, "\(message): max |Δ| \(worst) of \(top)", line: line)
    }

    func testInt8ScoresMatchTheSwiftKernel() {
        for (d, count, slots) in [(64, 37, 1), (64, 8, 1), (64, 21, 4), (24, 13, 2), (8, 3, 1)] {
            let rows = 40
            let keys = randomInt8(rows * d)
            let u = randomFloats(slots * 3 * d)
            // Slot 1 without an index reads rows in order; the others go through a neighbour index.
            let indexed = slots > 1 || d == 24
            let neighbours = (0..<(count * slots)).map { _ in Int32(rng.next() % UInt64(rows)) }
            let stride = count + 5
            var fast = [Float](repeating: 0, count: 3 * stride), slow = fast
            keys.withUnsafeBufferPointer { k in
                neighbours.withUnsafeBufferPointer { nbs in
                    let nb = indexed ? nbs.baseAddress : nil
                    kvc_int8_scores_group3(k.baseAddress!, count, d, slots, nb, u, 0.125, &fast, stride)
                    FusedKernels.score(Int8Rows(base: k.baseAddress!), count: count, slots: slots, neighbours: nb,
                                       queries: u, group: 3, headDim: d, scale: 0.125, into: &slow, stride: stride)
                }
            }
            assertClose(fast, slow, relative: 1e-5, "int8 scores d \(d), count \(count), slots \(slots)")
        }
    }

    /// Rebuilt keys: the transformed queries conj(w) ⊙ q per RoPE pair, times the column scales, then the int8 scores,
    /// against the same steps written out in Swift.
    func testRebuiltKeyScoresMatchTransformedQueries() {
        let d = 64, rows = 30
        for (count, slots, scaled) in [(1, 4, true), (9, 3, true), (17, 2, false)] {
            let keys = randomInt8(rows * d)
            let q = randomFloats(3 * d), w = randomFloats(slots * d), columnScale = randomFloats(d).map { abs($0) + 0.1 }
            let neighbours = (0..<(count * slots)).map { _ in Int32(rng.next() % UInt64(rows)) }
            var u = [Float](repeating: 0, count: slots * 3 * d)
            for m in 0..<slots {
                for k in 0..<3 {
                    for p in 0..<(d / 2) {
                        let qr = q[k * d + 2 * p], qi = q[k * d + 2 * p + 1], wr = w[m * d + 2 * p], wi = w[m * d + 2 * p + 1]
                        let s0 = scaled ? columnScale[2 * p] : 1, s1 = scaled ? columnScale[2 * p + 1] : 1
                        u[(m * 3 + k) * d + 2 * p] = (qr * wr + qi * wi) * s0
                        u[(m * 3 + k) * d + 2 * p + 1] = (qi * wr - qr * wi) * s1
                    }
                }
            }
            let stride = count + 2
            var fast = [Float](repeating: 0, count: 3 * stride), slow = fast
            keys.withUnsafeBufferPointer { k in
                neighbours.withUnsafeBufferPointer { nbs in
                    FusedKernels.score(Int8Rows(base: k.baseAddress!), count: count, slots: slots, neighbours: nbs.baseAddress,
                                       queries: u, group: 3, headDim: d, scale: 0.125, into: &slow, stride: stride)
                    columnScale.withUnsafeBufferPointer { s in
                        kvc_int8_rebuilt_scores_group3(k.baseAddress!, count, d, slots, nbs.baseAddress, q, w,
                                                       scaled ? s.baseAddress : nil, 0.125, &fast, stride)
                    }
                }
            }
            assertClose(fast, slow, relative: 1e-5, "rebuilt scores count \(count), slots \(slots), scaled \(scaled)")
        }
    }

    /// Groups back to back in one call: each group's neighbours, weights and score columns follow the previous one's.
    func testRebuiltKeyScoresOfSeveralGroupsInOneCall() {
        let d = 64, rows = 25
        let keys = randomInt8(rows * d), q = randomFloats(3 * d), columnScale = randomFloats(d).map { abs($0) + 0.1 }
        let members: [Int32] = [1, 3, 1, 2], slots: [Int32] = [4, 2, 3, 1]
        let weights = randomFloats(slots.reduce(0) { $0 + Int($1) } * d)
        let neighbours = (0..<zip(members, slots).reduce(0) { $0 + Int($1.0 * $1.1) }).map { _ in Int32(rng.next() % UInt64(rows)) }
        let count = Int(members.reduce(0, +)), stride = count + 3
        var together = [Float](repeating: 0, count: 3 * stride), apart = together
        kvc_int8_rebuilt_scores_groups3(keys, d, members.count, members, slots, neighbours, q, weights, columnScale, 0.125,
                                        &together, stride)
        var n = 0, w = 0, column = 0
        for (m, s) in zip(members, slots) {
            apart.withUnsafeMutableBufferPointer { out in
                kvc_int8_rebuilt_scores_group3(keys, Int(m), d, Int(s), Array(neighbours[n...]), q, Array(weights[w...]),
                                               columnScale, 0.125, out.baseAddress! + column, stride)
            }
            n += Int(m * s); w += Int(s) * d; column += Int(m)
        }
        XCTAssertEqual(together, apart)
    }

    func testHalfScoresAndAccumulateMatchTheSwiftKernels() {
        for (d, count) in [(64, 75), (64, 8), (16, 3)] {
            let bits = HalfConversion.floatToHalf(randomFloats(count * d))
            let q = randomFloats(3 * d)
            let stride = count + 3
            var fast = [Float](repeating: 0, count: 3 * stride), slow = fast
            bits.withUnsafeBufferPointer { b in
                b.baseAddress!.withMemoryRebound(to: Float16.self, capacity: b.count) { halves in
                    FusedKernels.score(HalfRows(base: halves), count: count, slots: 1, neighbours: nil, queries: q, group: 3,
                                       headDim: d, scale: 0.125, into: &slow, stride: stride)
                }
                kvc_half_scores_group3(b.baseAddress!, count, d, q, 0.125, &fast, stride)
            }
            assertClose(fast, slow, relative: 1e-5, "half scores d \(d), count \(count)")

            let p = randomFloats(3 * stride)
            var y = [Float](repeating: 0.5, count: 3 * d), reference = y
            bits.withUnsafeBufferPointer { b in
                b.baseAddress!.withMemoryRebound(to: Float16.self, capacity: b.count) { halves in
                    FusedKernels.accumulate(HalfRows(base: halves), count: count, probabilities: p, stride: stride, group: 3,
                                            headDim: d, into: &reference)
                }
                kvc_half_accumulate(b.baseAddress!, d, count, p, stride, 3, &y)
            }
            assertClose(y, reference, relative: 1e-5, "half accumulate d \(d), count \(count)")
        }
    }

    /// Gathered int8 rows at any width (whole 16- and 8-column chunks and a scalar tail) and any number of rows.
    func testInt8GatherAccumulateMatchesAPlainLoop() {
        let rows = 50
        for cols in [33, 16, 24, 5, 64] {
            for group in [1, 2, 3, 6] {
                let coefficients = randomInt8(rows * cols)
                let index = (0..<rows).map { Int32($0) }.shuffled(using: &rng).prefix(45).map { $0 }
                let stride = index.count + 7
                let p = randomFloats(group * stride)
                var y = randomFloats(group * cols), reference = y
                for k in 0..<group {
                    for (j, row) in index.enumerated() {
                        for c in 0..<cols { reference[k * cols + c] += p[k * stride + j] * Float(coefficients[Int(row) * cols + c]) }
                    }
                }
                kvc_int8_gather_accumulate(coefficients, cols, index, index.count, p, stride, group, &y)
                assertClose(y, reference, relative: 1e-5, "gather cols \(cols), group \(group)")
            }
        }
    }

    func testSoftmaxMatchesLibmAndZeroesMaskedEntries() {
        for n in [1, 7, 8, 37, 600] {
            var x = randomFloats(n, scale: 6)
            if n > 2 { x[1] = -.infinity; x[n - 1] = -.infinity }
            let top = x.max()!
            let e = x.map { expf($0 - top) }, total = e.reduce(0, +)
            let reference = e.map { $0 / total }
            kvc_softmax(&x, n)
            // The reference's own sequential float sum over n terms is off by ~n·2^-24 relative at worst.
            assertClose(x, reference, relative: 1e-5, "softmax n \(n)")
            if n > 2 { XCTAssertEqual(x[1], 0); XCTAssertEqual(x[n - 1], 0) }
        }
        var masked = [Float](repeating: -.infinity, count: 11)
        kvc_softmax(&masked, masked.count)
        XCTAssertEqual(masked, [Float](repeating: 0, count: 11))
        // Scores more than 87.3 below the top give exactly 0 (expf would give denormals there, below 1e-38).
        var wide: [Float] = [0, -50, -87, -88, -100, -1000]
        kvc_softmax(&wide, wide.count)
        XCTAssertEqual(wide[4], 0)
        XCTAssertEqual(wide[5], 0)
        XCTAssertEqual(wide[0], 1, accuracy: 1e-6)
    }
}
