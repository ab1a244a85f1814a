import XCTest
import KVCCore
import KVCCollect
@testable import KVCCapsule
import Foundation

final class Int8StorageTests: XCTestCase {
    /// Columns of very different magnitude, like RoPE'd keys.
    func matrix(rows: Int, cols: Int, seed: UInt64 = 7) -> [Float] {
        var rng = SeededRandom(seed: seed)
        return (0..<(rows * cols)).map { i in rng.nextNormal() * Float(1 + (i % cols) * (i % cols)) }
    }

    func testInt8IsWithinHalfAStepOfEveryScaleAndCountsItsScales() {
        let (n, d) = (40, 64)
        let x = matrix(rows: n, cols: d)
        for perRow in [false, true] {
            let m = StoredMatrix(x, rows: n, cols: d, precision: .int8, scalePerRow: perRow)
            let y = m.floats(), scales = HalfConversion.halfToFloat(m.scales)
            XCTAssertEqual(scales.count, perRow ? n : d)
            for i in 0..<n {
                for j in 0..<d {
                    let step = scales[perRow ? i : j]
                    XCTAssertLessThanOrEqual(abs(y[i * d + j] - x[i * d + j]), 0.5 * step * 1.002 + 1e-6, "(\(i),\(j)) perRow \(perRow)")
                }
            }
            XCTAssertEqual(m.byteCount, n * d + 2 * (perRow ? n : d))
            XCTAssertEqual(m.byteCount, StoredMatrix.bytes(rows: n, cols: d, precision: .int8, scalePerRow: perRow))
        }
        let half = StoredMatrix(x, rows: n, cols: d, precision: .float16)
        XCTAssertEqual(half.byteCount, 2 * n * d)
        XCTAssertEqual(half.floats(), HalfConversion.halfToFloat(HalfConversion.floatToHalf(x)))
        // An all-zero column must not divide by zero.
        let zeros = StoredMatrix([Float](repeating: 0, count: 8), rows: 2, cols: 4, precision: .int8)
        XCTAssertEqual(zeros.floats(), [Float](repeating: 0, count: 8))
    }

    func testInt8PlansMeetTheRatioAndKeepMoreThanFloat16() {
        for ratio in [0.4, 0.6, 0.8] {
            for keyRatio in [ratio - 0.15, ratio, ratio + 0.1] {
                for n in [64, 256] {
                    let half = CapsuleBudget(ratio: ratio, keyRatio: keyRatio).plan(tokens: n, headDim: 64)
                    let int8 = CapsuleBudget(ratio: ratio, keyRatio: keyRatio, keyPrecision: .int8, valuePrecision: .int8)
                        .plan(tokens: n, headDim: 64)
                    // Unless both sides are already exact-ish (every key, full-rank factors): then the budget cannot be spent.
                    let saturated = int8.keptKeys == n && int8.valueRank == min(n, 64)
                    if !saturated { XCTAssertEqual(int8.measuredRatio, ratio, accuracy: 0.02, "r=\(ratio) rK=\(keyRatio) N=\(n): \(int8)") }
                    XCTAssertGreaterThanOrEqual(int8.measuredRatio, ratio - 0.005, "int8 plans round down: never over budget")
                    XCTAssertGreaterThanOrEqual(int8.keptKeys, min(n, 2 * half.keptKeys - 4), "\(int8) vs \(half)")
                    if let q = half.valueRank, q > 0 { XCTAssertGreaterThanOrEqual(int8.valueRank ?? n, min(64, 2 * q - 1)) }
                }
            }
        }
        // r = 0.6 with the keys' share at 0.48: every key kept (64 x 64 + 128 bytes), values at rank 16.
        let plan = CapsuleBudget(ratio: 0.6, keyRatio: 0.48, keyPrecision: .int8, valuePrecision: .int8).plan(tokens: 64, headDim: 64)
        XCTAssertEqual(plan.keptKeys, 64)
        XCTAssertEqual(plan.keyBytes, 64 * 64 + 128)
        XCTAssertEqual(plan.valueRank, 16)
        XCTAssertEqual(plan.valueBytes, 64 * 16 + 2 * 16 + 16 * 64 + 2 * 16 + 128)
    }

    func testInt8FactorsMatchTheirByteFormulaAndStayCloseToFloat16Factors() throws {
        let (n, d, q) = (64, 64, 12)
        let v = matrix(rows: n, cols: d, seed: 3)
        let half = try v.withUnsafeBufferPointer { try FactoredValues(values: $0, tokens: n, headDim: d, rank: q) }
        let int8 = try v.withUnsafeBufferPointer { try FactoredValues(values: $0, tokens: n, headDim: d, rank: q, precision: .int8) }
        XCTAssertEqual(int8.byteCount, FactoredValues.bytes(tokens: n, headDim: d, rank: q, precision: .int8))
        XCTAssertEqual(half.byteCount, FactoredValues.bytes(tokens: n, headDim: d, rank: q, precision: .float16))
        let a = half.reconstruct(), b = int8.reconstruct()
        var diff: Float = 0, err: Float = 0
        for i in 0..<(n * d) { diff += (a[i] - b[i]) * (a[i] - b[i]); err += (a[i] - v[i]) * (a[i] - v[i]) }
        XCTAssertLessThan(diff, 0.05 * err, "int8 rounding must be small next to the truncation error of the rank")
    }

    func testAdapterKeepsItsDtypesAndOldAdaptersReadAsFloat16() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvc-int8-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let budget = CapsuleBudget(ratio: 0.6, keyRatio: 0.48, keyPrecision: .int8, valuePrecision: .int8)
        let adapter = CapsuleAdapter(fingerprint: "fp", layers: 2, kvHeads: 1, headDim: 8, ropeBase: 1e5,
                                     settings: CapsuleSettings(budget: budget, keys: .nearest), recipe: "")
        try adapter.export(to: dir + "/a.kvcap")
        XCTAssertEqual(try CapsuleAdapter.load(path: dir + "/a.kvcap").settings.budget, budget)
        // An adapter written before the dtype fields existed: same header without them.
        var payload = try adapter.payload()
        let header = payload.metadata["kvcapsule"]!
        var json = try JSONSerialization.jsonObject(with: Data(header.utf8)) as! [String: Any]
        json["key_dtype"] = nil
        json["value_dtype"] = nil
        payload.metadata["kvcapsule"] = String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self)
        try payload.write(to: dir + "/old.safetensors")
        let old = try CapsuleAdapter.loadCheckpoint(path: dir + "/old.safetensors").settings.budget
        XCTAssertEqual(old, CapsuleBudget(ratio: 0.6, keyRatio: 0.48))
    }
}
