import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCapsule

final class AdapterTests: XCTestCase {
    private func tempDir() -> String {
        let dir = NSTemporaryDirectory() + "kvc-adapter-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func testFitBeatsNearestCopyAndTheAdapterRoundTrips() throws {
        let layout = CacheLayout(layers: 2, kvHeads: 1, queryHeads: 3, headDim: 8)
        let rope = RotaryEmbedding(headDim: 8, base: 100_000)
        let dir = tempDir()
        try writeSyntheticCaches(to: dir, samples: 10, layout: layout, rope: rope)
        let fit = CapsuleFit(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.5), validationEvery: 5)
        let (model, layers) = try fit.run(store: CacheStore(directory: dir), ropeBase: 100_000, progress: false)
        for l in layers {
            XCTAssertLessThan(l.keyErrorLinear, l.keyErrorNearest, "layer \(l.layer)")
            XCTAssertLessThanOrEqual(l.attentionKLLinear, l.attentionKLNearest + 1e-9)
        }
        let adapter = CapsuleAdapter(fingerprint: "fp", layers: 2, kvHeads: 1, headDim: 8, ropeBase: 100_000,
                                     settings: CapsuleSettings(budget: fit.budget, keys: .linear(model)), recipe: "kind: capsule\n")
        let path = dir + "/a.kvcap"
        try adapter.export(to: path)
        let loaded = try CapsuleAdapter.load(path: path, fingerprint: "fp")
        guard case .linear(let back) = loaded.settings.keys else { return XCTFail("linear reconstructor expected") }
        XCTAssertEqual(loaded.settings.budget, fit.budget)
        XCTAssertEqual(loaded.recipe, "kind: capsule\n")
        // Float16 storage: coefficients agree to half precision.
        for slot in 0..<2 {
            for (config, coef) in model.coefficients[slot] {
                let other = try XCTUnwrap(back.coefficients[slot][config])
                for (a, b) in zip(coef, other) { XCTAssertEqual(a, b, accuracy: 2e-3 * max(1, abs(a))) }
            }
        }
        // Exporting the reloaded adapter gives the same bytes: what is loaded is exactly what was stored.
        try loaded.export(to: dir + "/b.kvcap")
        XCTAssertEqual(FileManager.default.contents(atPath: path), FileManager.default.contents(atPath: dir + "/b.kvcap"))
    }

    func testCorruptTruncatedAndForeignAdaptersAreRefused() throws {
        let dir = tempDir()
        let adapter = CapsuleAdapter(fingerprint: "fp", layers: 30, kvHeads: 3, headDim: 64, ropeBase: 100_000,
                                     settings: CapsuleSettings(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.5), keys: .nearest),
                                     recipe: "")
        let path = dir + "/a.kvcap"
        try adapter.export(to: path)
        let good = try XCTUnwrap(FileManager.default.contents(atPath: path))
        func expectError(_ bytes: Data, _ fragment: String, line: UInt = #line) {
            let p = dir + "/bad.kvcap"
            FileManager.default.createFile(atPath: p, contents: bytes)
            XCTAssertThrowsError(try CapsuleAdapter.load(path: p), line: line) {
                XCTAssertTrue("\($0)".contains(fragment) && "\($0)".contains("bad.kvcap"), "\($0)", line: line)
            }
        }
        expectError(good.prefix(20), "truncated")
        expectError(good.dropLast(3), "does not match the file")
        expectError(Data("GGUF".utf8) + good.dropFirst(4), "bad magic")
        var flipped = good
        flipped[flipped.count - 20] ^= 0x40
        expectError(flipped, "kvcap")   // zstd corruption or checksum mismatch, either names the file
        var version = good
        version[8] = 9
        expectError(version, "format version 9")
        let config = LlamaConfig(layerCount: 24, hiddenSize: 576, intermediateSize: 1536, headCount: 9, kvHeadCount: 3,
                                 headDim: 64, vocabularySize: 49152, contextLength: 8192, ropeBase: 100_000, rmsNormEpsilon: 1e-5)
        XCTAssertThrowsError(try CapsuleAdapter.load(path: path, config: config)) {
            XCTAssertTrue("\($0)".contains("30 layers") && "\($0)".contains("24"), "\($0)")
        }
        XCTAssertThrowsError(try CapsuleAdapter.load(path: path, fingerprint: "other")) {
            XCTAssertTrue("\($0)".contains("trained for backbone fp"), "\($0)")
        }
        // Seeded mutations never crash the reader.
        var rng = SeededRandom(seed: 3)
        var rejected = 0
        for _ in 0..<500 {
            var b = [UInt8](good)
            b[rng.nextInt(below: b.count)] ^= UInt8(1 << rng.nextInt(below: 8))
            let p = dir + "/m.kvcap"
            FileManager.default.createFile(atPath: p, contents: Data(b))
            if let loaded = try? CapsuleAdapter.load(path: p) {
                // A flip the format tolerates (for example in an unused zstd header bit) must not change the content.
                XCTAssertEqual(loaded.settings.budget, adapter.settings.budget)
                XCTAssertEqual(loaded.fingerprint, adapter.fingerprint)
            } else {
                rejected += 1
            }
        }
        XCTAssertGreaterThan(rejected, 450)
    }
}
