import XCTest
import KVCCore
import KVCCollect
@testable import KVCCapsule
import KVCBackbone
import Foundation

final class BudgetTests: XCTestCase {
    func testPlanMeetsTheRatioWithinTwoPercent() {
        for ratio in [0.4, 0.6, 0.8] {
            for keyRatio in [ratio - 0.2, ratio, ratio + 0.1] {
                for n in [64, 256, 1024] {
                    let plan = CapsuleBudget(ratio: ratio, keyRatio: keyRatio).plan(tokens: n, headDim: 64)
                    XCTAssertGreaterThanOrEqual(plan.measuredRatio, ratio - 0.02, "r=\(ratio) rK=\(keyRatio) N=\(n): \(plan)")
                    XCTAssertLessThanOrEqual(plan.measuredRatio, ratio + 0.02, "r=\(ratio) rK=\(keyRatio) N=\(n): \(plan)")
                }
            }
        }
    }

    func testByteCountsFollowTheFormats() {
        let plan = CapsuleBudget(ratio: 0.6, keyRatio: 0.5).plan(tokens: 64, headDim: 64)
        XCTAssertEqual(plan.keptKeys, 32)
        XCTAssertEqual(plan.fullBytes, 2 * 64 * 64 * 2)
        XCTAssertEqual(plan.keyBytes, 32 * 64 * 2)
        // rV = 0.7: budget 0.3 * 4096 = 1228.8 halves; (64 + 64) q + 64 <= 1228.8 -> q = 9.
        XCTAssertEqual(plan.valueRank, 9)
        XCTAssertEqual(plan.valueBytes, (64 * 9 + 9 * 64 + 64) * 2)
        // r = 0 keeps every key and the raw values (full-rank factors would cost more than the values).
        let none = CapsuleBudget(ratio: 0, keyRatio: 0).plan(tokens: 64, headDim: 64)
        XCTAssertEqual(none.keptKeys, 64)
        XCTAssertNil(none.valueRank)
        XCTAssertEqual(none.bytes, none.fullBytes)
    }
}

final class RetentionTests: XCTestCase {
    let grid = [ImageGrid(start: 0, rows: 8, cols: 8)]

    func testHalfIsTheCheckerboardAndQuarterTheStrideTwoLattice() {
        let half = RetentionPolicy.strided.mask(grids: grid, kept: 32)
        for r in 0..<8 { for c in 0..<8 { XCTAssertEqual(half[r * 8 + c], (r + c) % 2 == 0, "(\(r),\(c))") } }
        let quarter = RetentionPolicy.strided.mask(grids: grid, kept: 16)
        for r in 0..<8 { for c in 0..<8 { XCTAssertEqual(quarter[r * 8 + c], r % 2 == 0 && c % 2 == 0, "(\(r),\(c))") } }
    }

    func testEveryDroppedTokenHasARetainedNeighbourDownToAQuarter() {
        for kept in 16...63 {
            for policy in RetentionPolicy.allCases {
                let scores = (0..<64).map { Float(($0 * 37) % 64) }
                let m = policy.mask(grids: grid, kept: kept, scores: scores)
                XCTAssertEqual(m.filter { $0 }.count, kept)
                for r in 0..<8 {
                    for c in 0..<8 where !m[r * 8 + c] {
                        var covered = false
                        for dr in -1...1 { for dc in -1...1 {
                            let rr = r + dr, cc = c + dc
                            if rr >= 0, rr < 8, cc >= 0, cc < 8, m[rr * 8 + cc] { covered = true }
                        } }
                        XCTAssertTrue(covered, "\(policy) kept=\(kept): (\(r),\(c)) has no retained neighbour")
                    }
                }
            }
        }
    }

    func testScoredCoversEveryCellWithItsMostAttendedToken() {
        var scores = [Float](repeating: 0, count: 64)
        scores[9] = 5   // (1,1): the best of cell (0,0)
        scores[3] = 4   // (0,3): the best of cell (0,1)
        scores[1] = 3   // (0,1): second in cell (0,0), kept by score
        let m = RetentionPolicy.scored.mask(grids: grid, kept: 17, scores: scores)
        XCTAssertTrue(m[9] && m[3] && m[1])
        XCTAssertFalse(m[0] || m[2], "a cell's coverage token is its most attended one, not a fixed lattice point")
        XCTAssertTrue(m[18], "cells without scores keep their first token")
    }

    func testImagesOfAPromptKeepEqualShares() {
        let grids = [ImageGrid(start: 0, rows: 8, cols: 8), ImageGrid(start: 64, rows: 8, cols: 8)]
        let m = RetentionPolicy.strided.mask(grids: grids, kept: 64)
        XCTAssertEqual(m[0..<64].filter { $0 }.count, 32)
        XCTAssertEqual(m[64..<128].filter { $0 }.count, 32)
    }
}

final class ValuePCATests: XCTestCase {
    func testFullRankReproducesValuesToHalfPrecision() throws {
        var rng = SeededRandom(seed: 3)
        let n = 64, d = 16
        let v = (0..<(n * d)).map { _ in rng.nextNormal() }
        let f = try v.withUnsafeBufferPointer { try FactoredValues(values: $0, tokens: n, headDim: d, rank: d) }
        let r = f.reconstruct()
        for i in 0..<(n * d) { XCTAssertEqual(r[i], v[i], accuracy: 0.01) }
    }

    func testLowRankDataIsExactAtItsRankAndBytesAreCounted() throws {
        var rng = SeededRandom(seed: 4)
        let n = 40, d = 12, q = 3
        let a = (0..<(n * q)).map { _ in rng.nextNormal() }, b = (0..<(q * d)).map { _ in rng.nextNormal() }
        var v = [Float](repeating: 0.5, count: n * d)
        for i in 0..<n { for j in 0..<d { for k in 0..<q { v[i * d + j] += a[i * q + k] * b[k * d + j] } } }
        let f = try v.withUnsafeBufferPointer { try FactoredValues(values: $0, tokens: n, headDim: d, rank: q) }
        XCTAssertEqual(f.byteCount, (n * q + q * d + d) * 2)
        XCTAssertEqual(try FactoredValues.energyKept(values: v, tokens: n, headDim: d, rank: q), 1, accuracy: 1e-5)
        let r = f.reconstruct()
        let err = zip(r, v).map { ($0 - $1) * ($0 - $1) }.reduce(0, +), norm = v.map { $0 * $0 }.reduce(0, +)
        XCTAssertLessThan((err / norm).squareRoot(), 2e-3)
    }

    func testRankZeroKeepsTheMean() throws {
        let v: [Float] = [1, 2, 3, 4, 5, 6]   // 3 tokens x 2
        let f = try v.withUnsafeBufferPointer { try FactoredValues(values: $0, tokens: 3, headDim: 2, rank: 0) }
        XCTAssertEqual(f.reconstruct(), [3, 4, 3, 4, 3, 4])
        XCTAssertEqual(f.byteCount, 4)
    }
}

final class LinearKeyReconstructorTests: XCTestCase {
    /// Keys whose de-rotated pairs form a geometric field over the grid (k'(r,c) = z·w^r·v^c per pair) are exactly
    /// predictable from grid neighbours by complex coefficients: fitting and rebuilding in the rotated frame must
    /// recover them, which checks de-rotation, the fit and re-rotation together.
    func testRecoversAnExactlyLinearFieldThroughTheRotatedFrame() throws {
        let d = 8, rows = 6, cols = 6, n = rows * cols
        let rope = RotaryEmbedding(headDim: d, base: 100_000)
        let grid = [ImageGrid(start: 0, rows: rows, cols: cols)]
        let positions = (0..<n).map { Int32(17 + $0) }
        var rng = SeededRandom(seed: 5)
        func field() -> [Float] {
            var keys = [Float](repeating: 0, count: n * d)
            for i in 0..<(d / 2) {
                let z = (rng.nextNormal(), rng.nextNormal())
                let wAngle = rng.nextUniform(), vAngle = rng.nextUniform(), wMag = 0.9 + 0.2 * rng.nextUniform()
                for r in 0..<rows {
                    for c in 0..<cols {
                        let mag = pow(wMag, Float(r)), ang = wAngle * Float(r) + vAngle * Float(c)
                        let re = mag * (z.0 * cos(ang) - z.1 * sin(ang)), im = mag * (z.0 * sin(ang) + z.1 * cos(ang))
                        keys[(r * cols + c) * d + 2 * i] = re
                        keys[(r * cols + c) * d + 2 * i + 1] = im
                    }
                }
            }
            // Rotate to the cached frame.
            for t in 0..<n {
                let rotated = rope.rotate(Array(keys[(t * d)..<((t + 1) * d)]), position: Int(positions[t]))
                for e in 0..<d { keys[t * d + e] = rotated[e] }
            }
            return keys
        }
        let keep = RetentionPolicy.strided.mask(grids: grid, kept: n / 2)
        let nb = GridNeighbours(grids: grid, keep: keep, count: 4)
        var fit = LinearKeyReconstructorFit(layers: 1, kvHeads: 1, headDim: d, rope: rope, ridge: 1e-9)
        // Several fields with the same (w, v) per pair would be needed for a unique fit; a single field per sample with
        // fresh random z still shares nothing, so fit and test on the same field: exactness is what is checked here.
        let keys = field()
        keys.withUnsafeBufferPointer { fit.add(layer: 0, head: 0, keys: $0.baseAddress!, positions: positions, neighbours: nb) }
        let model = fit.solve()
        let retained = nb.retained.flatMap { Array(keys[($0 * d)..<(($0 + 1) * d)]) }
        var out = [Float](repeating: 0, count: nb.dropped.count * d)
        let fallbacks = retained.withUnsafeBufferPointer {
            model.reconstruct(layer: 0, head: 0, neighbours: nb, retainedKeys: $0.baseAddress!, positions: positions, into: &out)
        }
        XCTAssertEqual(fallbacks, 0)
        var err: Float = 0, norm: Float = 0
        for (t, j) in nb.dropped.enumerated() {
            for e in 0..<d {
                let diff = out[t * d + e] - keys[j * d + e]
                err += diff * diff
                norm += keys[j * d + e] * keys[j * d + e]
            }
        }
        XCTAssertLessThan((err / norm).squareRoot(), 1e-3)
    }

    func testNeighboursAreNearestFirstAndStayInTheirImage() {
        let grids = [ImageGrid(start: 0, rows: 4, cols: 4), ImageGrid(start: 16, rows: 4, cols: 4)]
        let keep = RetentionPolicy.strided.mask(grids: grids, kept: 16)
        let nb = GridNeighbours(grids: grids, keep: keep, count: 4)
        XCTAssertEqual(nb.dropped.count, 16)
        for (t, j) in nb.dropped.enumerated() {
            let image = j / 16
            for r in nb.neighbours[t] { XCTAssertEqual(nb.retained[r] / 16, image) }
            let dist = nb.offsets[t].map { $0.dRow * $0.dRow + $0.dCol * $0.dCol }
            XCTAssertEqual(dist, dist.sorted())
            XCTAssertEqual(dist.first, 1, "a checkerboard leaves a direct neighbour")
        }
    }
}
