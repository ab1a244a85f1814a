import Foundation
import XCTest
import KVCCore
import KVCTensor

/// `TrainingCheckpoint`: resuming from it continues a run bit for bit, and a damaged or foreign file is refused
/// before anything is modified. `NumericalFault`: non-finite losses, gradients and parameters are named.
final class TrainingCheckpointTests: XCTestCase {
    private struct Run {
        let model: MLP
        let optimizer: AdamW
        init(seed: UInt64) {
            var rng = SeededRandom(seed: seed)
            model = MLP(sizes: [4, 8, 3], activation: .tanh, rng: &rng)
            optimizer = AdamW(parameters: model.parameters, learningRate: 0.05, weightDecay: 0.01)
        }
        /// Steps `range` of a fixed regression task; the data of step s depends only on s.
        func train(_ range: Range<Int>) {
            for s in range {
                var rng = SeededRandom(seed: 1000 + UInt64(s))
                let x = Tensor.randn([16, 4], rng: &rng), y = Tensor.randn([16, 3], rng: &rng)
                optimizer.zeroGrad()
                let loss = mseLoss(model(x), y)
                loss.backward()
                optimizer.step()
            }
        }
        var bits: [UInt32] { model.parameters.flatMap { $0.scalars.map(\.bitPattern) } }
    }

    private func temporaryPath(_ name: String) throws -> String {
        try ChildProcess.temporaryDirectory("ckpt") + "/" + name
    }

    func testResumeFromCheckpointIsBitIdenticalAndNeedsTheOptimizerMoments() throws {
        let straight = Run(seed: 1)
        straight.train(0..<10)

        let first = Run(seed: 1)
        first.train(0..<5)
        let path = try temporaryPath("state.safetensors")
        var stream = SeededRandom(seed: 42)
        _ = stream.nextNormal()   // leaves a spare normal cached: the state must carry it
        try TrainingCheckpoint(step: 5, parameters: first.model.namedParameters, optimizers: ["mlp": first.optimizer],
                               random: ["order": stream], metadata: ["note": "test"]).save(to: path)

        let resumed = Run(seed: 99)   // other initial weights: everything must come from the file
        let saved = try TrainingCheckpoint.restore(from: path, parameters: resumed.model.namedParameters,
                                                   optimizers: ["mlp": resumed.optimizer])
        XCTAssertEqual(saved.step, 5)
        XCTAssertEqual(saved.metadata["note"], "test")
        XCTAssertEqual(resumed.optimizer.stepCount, 5)
        var restoredStream = try XCTUnwrap(saved.random["order"])
        XCTAssertEqual((0..<5).map { _ in restoredStream.nextNormal().bitPattern }, (0..<5).map { _ in stream.nextNormal().bitPattern })
        resumed.train(5..<10)
        XCTAssertEqual(resumed.bits, straight.bits, "resumed run differs from the uninterrupted one")

        // The bug this replaces: parameters alone, fresh moments. The result differs, so the test above can fail.
        let paramsOnly = Run(seed: 99)
        for (a, b) in zip(paramsOnly.model.parameters, first.model.parameters) { a.assign(b.data) }
        paramsOnly.train(5..<10)
        XCTAssertNotEqual(paramsOnly.bits, straight.bits)
    }

    func testDamagedOrForeignCheckpointIsRefusedAndNothingIsModified() throws {
        let run = Run(seed: 1)
        run.train(0..<3)
        let path = try temporaryPath("state.safetensors")
        try TrainingCheckpoint(step: 3, parameters: run.model.namedParameters, optimizers: ["mlp": run.optimizer]).save(to: path)
        let good = try Data(contentsOf: URL(fileURLWithPath: path))

        func assertRefused(_ data: Data, _ expected: String, into target: Run? = nil, groups: [String]? = nil,
                           line: UInt = #line) throws {
            let bad = try temporaryPath("bad.safetensors")
            try data.write(to: URL(fileURLWithPath: bad))
            let t = target ?? Run(seed: 7)
            let before = t.bits
            var optimizers: [String: AdamW] = [:]
            for g in groups ?? ["mlp"] { optimizers[g] = t.optimizer }
            XCTAssertThrowsError(try TrainingCheckpoint.restore(from: bad, parameters: t.model.namedParameters,
                                                                optimizers: optimizers), line: line) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(error)", line: line)
                XCTAssertTrue("\(error)".contains(bad), "error does not name the file: \(error)", line: line)
            }
            XCTAssertEqual(t.bits, before, "a refused checkpoint modified the parameters", line: line)
            XCTAssertEqual(t.optimizer.stepCount, 0, line: line)
        }
        // One flipped bit in the last tensor's data: caught by the content checksum.
        var flipped = good
        flipped[flipped.count - 3] ^= 0x10
        try assertRefused(flipped, "checksum")
        // Truncated.
        try assertRefused(good.prefix(good.count - 100), "past the data section")
        // Another model (other layer sizes), and other optimizer groups.
        var rng = SeededRandom(seed: 3)
        let other = MLP(sizes: [4, 5, 3], rng: &rng)
        let otherPath = try temporaryPath("other.safetensors")
        try TrainingCheckpoint(step: 1, parameters: other.namedParameters).save(to: otherPath)
        try assertRefused(try Data(contentsOf: URL(fileURLWithPath: otherPath)), "this run expects F32 [8, 4]", groups: [])
        try assertRefused(good, "optimizer groups", groups: ["encoder"])
        // A plain safetensors file (e.g. a front end) is not a training state.
        try run.model.save(to: otherPath)
        try assertRefused(try Data(contentsOf: URL(fileURLWithPath: otherPath)), "not a training checkpoint")
    }

    func testDivergedParametersAreNeverSaved() throws {
        let run = Run(seed: 1)
        let path = try temporaryPath("state.safetensors")
        try TrainingCheckpoint(step: 1, parameters: run.model.namedParameters).save(to: path)
        let good = try Data(contentsOf: URL(fileURLWithPath: path))
        run.model.layers[1].weight.data[5] = .infinity
        XCTAssertThrowsError(try TrainingCheckpoint(step: 2, parameters: run.model.namedParameters).save(to: path)) { error in
            XCTAssertTrue("\(error)".contains("layers.1.weight") && "\(error)".contains("step 2"), "\(error)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), good, "the last good checkpoint was replaced")
    }

    func testNonFiniteLossAndGradientsAreNamed() throws {
        XCTAssertNoThrow(try NumericalFault.checkLoss(1.5, step: 3, context: "t"))
        XCTAssertThrowsError(try NumericalFault.checkLoss(.nan, step: 3, context: "t")) { XCTAssertTrue("\($0)".contains("step 3")) }
        // sqrt at 0: the loss is finite (0) but its gradient is not; the check names the parameter.
        let w = Tensor(shape: [3], values: [1, 0, 2], requiresGrad: true)
        let v = Tensor(shape: [2], values: [1, 1], requiresGrad: true)
        let loss = (w.sqrt().sum() + (v * v).sum())
        loss.backward()
        XCTAssertTrue(loss.item.isFinite)
        let named = [("v", v), ("w", w)]
        XCTAssertThrowsError(try NumericalFault.checkGradients(named, step: 7, context: "test")) { error in
            XCTAssertTrue("\(error)".contains("'w'") && "\(error)".contains("step 7") && "\(error)".contains("element 1"),
                          "\(error)")
        }
        XCTAssertNoThrow(try NumericalFault.checkGradients([("v", v)], step: 7, context: "test"))
        XCTAssertEqual(NumericalFault.firstNonFinite([1, 2, .nan, 4], count: 4), 2)
        XCTAssertNil(NumericalFault.firstNonFinite([1, 2, 3, -3e38], count: 4))
    }
}
