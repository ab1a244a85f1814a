import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
import KVCTensor
@testable import KVCCapsule

final class KeyResidualMLPTests: XCTestCase {
    let layout = CacheLayout(layers: 2, kvHeads: 1, queryHeads: 3, headDim: 8)
    let rope = RotaryEmbedding(headDim: 8, base: 100_000)
    let budget = CapsuleBudget(ratio: 0.6, keyRatio: 0.5)

    private func tempDir() -> String {
        let dir = NSTemporaryDirectory() + "kvc-keymlp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Training rotates the residual with the autodiff RoPE op, inference with the backbone's tables: they must agree.
    func testAutodiffRopeMatchesTheBackboneRotation() {
        var rng = SeededRandom(seed: 4)
        let x = (0..<(5 * 8)).map { _ in rng.nextNormal() }
        let positions: [Int32] = [0, 3, 17, 250, 1023]
        let ours = rope.rotateRows(x, positions: positions, sign: 1)
        let tensor = Tensor(shape: [5, 8], values: x).rope(positions: positions.map(Int.init), base: Float(rope.base), layout: .interleaved)
        for (a, b) in zip(ours, tensor.scalars) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        let back = rope.rotateRows(ours, positions: positions, sign: -1)
        for (a, b) in zip(back, x) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }

    private func train(_ dir: String, epochs: Int = 3) throws -> (KeyResidualMLP, [KeyResidualTraining.LayerReport], LinearKeyReconstructor) {
        let store = try CacheStore(directory: dir)
        let fit = CapsuleFit(budget: budget, validationEvery: 5)
        let (linear, _) = try fit.run(store: store, ropeBase: rope.base, progress: false)
        var samples: [CacheSample] = []
        try store.forEachSample { samples.append($0) }
        var options = KeyResidualTraining.Options()
        options.hidden = 16
        options.epochs = epochs
        options.batch = 4
        options.warmupSteps = 2
        let training = KeyResidualTraining(options: options, budget: budget, policy: .strided, neighbours: 4, validationEvery: 5)
        let (model, reports) = try training.run(samples: samples, layout: layout, linear: linear, rope: rope,
                                                checkpointPath: dir + "/ckpt.safetensors", metricsPath: dir + "/metrics.jsonl",
                                                fingerprint: "run-1", log: { _ in })
        return (model, reports, linear)
    }

    func testTrainingLogsCheckpointsAndResumesBitIdentically() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeSyntheticCaches(to: dir, samples: 10, layout: layout, rope: rope)
        let (full, reports, _) = try train(dir)
        XCTAssertEqual(reports.count, 2)
        for r in reports {
            // A layer keeps its MLP only when it lowered the held-out attention KL.
            XCTAssertEqual(r.kept, r.attentionKLMLP < r.attentionKLLinear, "layer \(r.layer)")
            XCTAssertEqual(full.layers[r.layer] != nil, r.kept)
        }
        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2 * 3 + 2, "one line per epoch and one validation line per layer")
        for line in lines { XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(line.utf8))) }

        // Interrupted after layer 0: the checkpoint then holds one layer; rerunning finishes layer 1 the same way.
        var partial = full
        partial.layers[1] = nil
        try KeyResidualTraining.saveCheckpoint(model: partial, completed: 1, reports: Array(reports.prefix(1)),
                                               fingerprint: "run-1", path: dir + "/ckpt.safetensors")
        let (resumed, resumedReports, _) = try train(dir)
        XCTAssertEqual(resumed.layers, full.layers, "resumed run must equal the uninterrupted one bit for bit")
        XCTAssertEqual(resumedReports.map(\.attentionKLMLP), reports.map(\.attentionKLMLP))

        // A checkpoint of another run is refused, not silently continued.
        var other = KeyResidualMLP(layers: [nil, nil], kvHeads: 1, headDim: 8, slots: 4, hidden: 16)
        XCTAssertThrowsError(try KeyResidualTraining.loadCheckpoint(path: dir + "/ckpt.safetensors", fingerprint: "run-2",
                                                                    into: &other)) {
            XCTAssertTrue("\($0)".contains("another recipe"), "\($0)")
        }
    }

    func testAdapterWithTheMLPRoundTripsAndRebuildsTheSameKeys() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeSyntheticCaches(to: dir, samples: 10, layout: layout, rope: rope)
        let (mlp, _, linear) = try train(dir, epochs: 2)
        // Force both layers on, so the round trip covers every tensor.
        var model = mlp
        var rng = SeededRandom(seed: 9)
        for l in 0..<2 where model.layers[l] == nil {
            let width = model.inputSize
            model.layers[l] = KeyResidualMLP.Layer(scale: 1, w1: (0..<(16 * width)).map { _ in 0.1 * rng.nextNormal() },
                                                   b1: [Float](repeating: 0, count: 16), w2: (0..<(8 * 16)).map { _ in 0.1 * rng.nextNormal() },
                                                   b2: [Float](repeating: 0, count: 8))
        }
        let adapter = CapsuleAdapter(fingerprint: "fp", layers: 2, kvHeads: 1, headDim: 8, ropeBase: rope.base,
                                     settings: CapsuleSettings(budget: budget, keys: .linear(linear), keyResidual: model), recipe: "")
        try adapter.export(to: dir + "/a.kvcap")
        let loaded = try CapsuleAdapter.load(path: dir + "/a.kvcap")
        let back = try XCTUnwrap(loaded.settings.keyResidual)
        XCTAssertEqual(back.hidden, 16)
        // Weights are stored as float16: the rebuilt keys agree to half precision.
        let grids = [ImageGrid(start: 0, rows: 8, cols: 8)]
        let nb = GridNeighbours(grids: grids, keep: RetentionPolicy.strided.mask(grids: grids, kept: 32), count: 4)
        let positions = (0..<64).map { Int32(6 + $0) }
        let retained = (0..<(32 * 8)).map { _ in rng.nextNormal() }
        for l in 0..<2 {
            var a = (0..<(32 * 8)).map { _ in rng.nextNormal() }, b = a
            model.addResidual(layer: l, head: 0, neighbours: nb, retainedKeys: retained, positions: positions, rope: rope, dropped: &a)
            back.addResidual(layer: l, head: 0, neighbours: nb, retainedKeys: retained, positions: positions, rope: rope, dropped: &b)
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 2e-2 * max(1, abs(x))) }
        }
        // Re-exporting the loaded adapter gives the same bytes.
        try loaded.export(to: dir + "/b.kvcap")
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/a.kvcap"), FileManager.default.contents(atPath: dir + "/b.kvcap"))
    }
}

final class CapsuleRecipeTests: XCTestCase {
    private func recipe(_ body: String) throws -> CapsuleRecipe {
        let text = "kind: capsule\ncaches: c\nrun_dir: r\nratio: 0.8\n" + body
        return try CapsuleRecipe(RecipeSection.parse(text, file: "t.yaml"), text: text)
    }

    func testMLPAndInt8KeysAreReadAndBadValuesNameTheirKey() throws {
        let r = try recipe("key_ratio: 0.75\nkey_dtype: int8\nvalue_dtype: int8\nreconstructor:\n  kind: mlp\n  hidden: 32\n  epochs: 3\n")
        XCTAssertEqual(r.mlp?.hidden, 32)
        XCTAssertEqual(r.mlp?.epochs, 3)
        XCTAssertEqual(r.fit.budget, CapsuleBudget(ratio: 0.8, keyRatio: 0.75, keyPrecision: .int8, valuePrecision: .int8))
        XCTAssertNil(try recipe("reconstructor:\n  kind: linear\n").mlp)
        for (body, names) in [("key_dtype: int4\n", ["key_dtype", "f16", "int8"]),
                              ("reconstructor:\n  kind: mlp\n  hidden: 0\n", ["hidden"]),
                              ("reconstructor:\n  kind: transformer\n", ["kind", "mlp"]),
                              ("reconstructor:\n  kind: linear\n  epochs: 3\n", ["epochs"])] {
            XCTAssertThrowsError(try recipe(body), body) { error in
                for name in names { XCTAssertTrue("\(error)".contains(name), "\(body): \(error) should name \(name)") }
            }
        }
    }
}
