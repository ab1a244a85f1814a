import Foundation
import KVCCore
import XCTest
@testable import KVCTensor

/// Optimizers, schedule, clipping, determinism, learning and parameter files.
final class TrainingTests: XCTestCase {
    /// AdamW against an independent double-precision transcription of the PyTorch update rule.
    func testAdamWMatchesReferenceUpdate() {
        let p = Tensor(shape: [3], values: [0.5, -1, 2], requiresGrad: true)
        let opt = AdamW(parameters: [p], learningRate: 0.1, beta1: 0.8, beta2: 0.9, eps: 1e-6, weightDecay: 0.05)
        var ref = [0.5, -1.0, 2.0], m = [0.0, 0, 0], v = [0.0, 0, 0]
        let grads: [[Float]] = [[1, -2, 0.5], [0.3, 0.1, -4], [-1, 1, 1]]
        for (t, g) in grads.enumerated() {
            opt.zeroGrad()
            (p * Tensor(shape: [3], values: g)).sum().backward()  // d/dp = g
            opt.step()
            for i in 0..<3 {
                let gi = Double(g[i])
                ref[i] *= 1 - 0.1 * 0.05
                m[i] = 0.8 * m[i] + 0.2 * gi
                v[i] = 0.9 * v[i] + 0.1 * gi * gi
                let mh = m[i] / (1 - pow(0.8, Double(t + 1))), vh = v[i] / (1 - pow(0.9, Double(t + 1)))
                ref[i] -= 0.1 * mh / (vh.squareRoot() + 1e-6)
            }
        }
        for i in 0..<3 { XCTAssertEqual(Double(p.data[i]), ref[i], accuracy: 1e-5) }
    }

    /// The same check on a tensor large enough for the SIMD body, the scalar tail and the multi-core split.
    func testAdamWVectorisedAndSplitPathsMatchReference() {
        let n = (1 << 17) + 13
        var rng = SeededRandom(seed: 21)
        let p = Tensor.randn([n], rng: &rng, requiresGrad: true)
        var ref = p.scalars.map(Double.init), m = [Double](repeating: 0, count: n), v = m
        let opt = AdamW(parameters: [p], learningRate: 0.01, weightDecay: 0.1)
        for t in 1...3 {
            let g = Tensor.randn([n], rng: &rng)
            opt.zeroGrad()
            (p * g).sum().backward()
            opt.step()
            let (bc1, bc2) = (1 - pow(0.9, Double(t)), 1 - pow(0.999, Double(t)))
            for i in 0..<n {
                let gi = Double(g.data[i])
                ref[i] *= 1 - 0.01 * 0.1
                m[i] = 0.9 * m[i] + 0.1 * gi
                v[i] = 0.999 * v[i] + 0.001 * gi * gi
                ref[i] -= 0.01 / bc1 * m[i] / (v[i].squareRoot() / bc2.squareRoot() + 1e-8)
            }
        }
        var worst = 0.0
        for i in 0..<n { worst = max(worst, abs(Double(p.data[i]) - ref[i])) }
        XCTAssertLessThan(worst, 1e-5, "largest deviation from the reference update")
    }

    /// SGD with momentum on f(x) = x²/2 (gradient x): v ← μv + x, x ← x - lr·v, written out by hand.
    func testSGDMomentum() {
        let x = Tensor(shape: [1], values: [1], requiresGrad: true)
        let opt = SGD(parameters: [x], learningRate: 0.1, momentum: 0.9)
        var rx = 1.0, rv = 0.0
        for step in 0..<5 {
            opt.zeroGrad()
            (x * x * 0.5).sum().backward()
            opt.step()
            rv = step == 0 ? rx : 0.9 * rv + rx
            rx -= 0.1 * rv
            XCTAssertEqual(Double(x.data[0]), rx, accuracy: 1e-6)
        }
    }

    func testClipGradNorm() {
        let a = Tensor(shape: [2], values: [1, 1], requiresGrad: true)
        let b = Tensor(shape: [1], values: [1], requiresGrad: true)
        ((a * Tensor(shape: [2], values: [3, 0])).sum() + (b * 4).sum()).backward()  // grads (3, 0) and (4): norm 5
        let norm = clipGradNorm([a, b], maxNorm: 1)
        XCTAssertEqual(norm, 5, accuracy: 1e-5)
        XCTAssertEqual(a.grad!.scalars[0], 0.6, accuracy: 1e-5)
        XCTAssertEqual(b.grad!.scalars[0], 0.8, accuracy: 1e-5)
        XCTAssertEqual(clipGradNorm([a, b], maxNorm: 10), 1, accuracy: 1e-5, "below the limit nothing changes")
    }

    func testWarmupCosineSchedule() {
        let s = WarmupCosineSchedule(baseLR: 1, warmupSteps: 10, totalSteps: 110, minLR: 0.1)
        XCTAssertEqual(s.learningRate(at: 0), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(at: 4), 0.5, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(at: 10), 1, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(at: 60), 0.55, accuracy: 1e-6, "half way down the cosine")
        XCTAssertEqual(s.learningRate(at: 110), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(at: 500), 0.1, accuracy: 1e-6)
    }

    /// Trains a small MLP on a 2-D two-spirals-like problem (label = sign of x·y) and returns its parameters.
    private func train(seed: UInt64, steps: Int = 150) -> (params: [Float], loss: Float, accuracy: Float) {
        var rng = SeededRandom(seed: seed)
        let model = MLP(sizes: [2, 32, 2], activation: .tanh, rng: &rng)
        let opt = AdamW(parameters: model.parameters, learningRate: 0.02)
        var pts = [Float](), labels = [Int]()
        for _ in 0..<256 {
            let x = rng.nextUniform() * 2 - 1, y = rng.nextUniform() * 2 - 1
            pts += [x, y]; labels.append(x * y > 0 ? 1 : 0)
        }
        let input = Tensor(shape: [256, 2], values: pts)
        var loss: Float = 0
        for _ in 0..<steps {
            opt.zeroGrad()
            let l = crossEntropyLoss(logits: model(input), targets: labels)
            l.backward()
            clipGradNorm(model.parameters, maxNorm: 5)
            opt.step()
            loss = l.item
        }
        let logits = Tensor.withNoGrad { model(input) }
        var correct = 0
        for i in 0..<256 where (logits.data[2 * i + 1] > logits.data[2 * i] ? 1 : 0) == labels[i] { correct += 1 }
        return (model.parameters.flatMap(\.scalars), loss, Float(correct) / 256)
    }

    func testMLPLearnsAndTrainingIsBitIdenticalUnderASeed() {
        let a = train(seed: 5), b = train(seed: 5), c = train(seed: 6)
        XCTAssertGreaterThan(a.accuracy, 0.9, "the MLP did not learn the quadrant task (loss \(a.loss))")
        XCTAssertEqual(a.params.map(\.bitPattern), b.params.map(\.bitPattern), "same seed, different parameters")
        XCTAssertNotEqual(a.params, c.params)
    }

    // MARK: Parameter files

    private func tempPath(_ name: String) -> String {
        NSTemporaryDirectory() + "kvctensor-\(getpid())-\(name).safetensors"
    }

    func testSaveLoadRoundTripInAllFloatFormats() throws {
        var rng = SeededRandom(seed: 3)
        let source = MLP(sizes: [4, 8, 3], rng: &rng)
        for (dtype, tol) in [(SafetensorsDType.f32, Float(0)), (.f16, 1e-3), (.bf16, 8e-3)] {
            let path = tempPath(dtype.rawValue)
            defer { try? FileManager.default.removeItem(atPath: path) }
            try source.save(to: path, dtype: dtype)
            var other = SeededRandom(seed: 4)
            let target = MLP(sizes: [4, 8, 3], rng: &other)
            try target.load(from: path)
            for ((name, a), (_, b)) in zip(source.namedParameters, target.namedParameters) {
                for i in 0..<a.count {
                    XCTAssertEqual(b.data[i], a.data[i], accuracy: tol * max(1, abs(a.data[i])), "\(dtype) \(name)[\(i)]")
                }
            }
            XCTAssertEqual(try SafetensorsFile(path: path).info("layers.1.weight").shape, [3, 8])
        }
    }

    func testLoadRefusesMismatchedFilesNamingTheTensor() throws {
        var rng = SeededRandom(seed: 3)
        let path = tempPath("mismatch")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try MLP(sizes: [4, 8, 3], rng: &rng).save(to: path)
        let wrongShape = MLP(sizes: [4, 9, 3], rng: &rng)
        let before = wrongShape.parameters.flatMap(\.scalars)
        XCTAssertThrowsError(try wrongShape.load(from: path)) { error in
            XCTAssertTrue("\(error)".contains("layers.0.weight") && "\(error)".contains("[8, 4]"), "\(error)")
        }
        XCTAssertEqual(wrongShape.parameters.flatMap(\.scalars), before, "a failed load modified parameters")
        XCTAssertThrowsError(try Linear(4, 8, rng: &rng).load(from: path)) { error in
            XCTAssertTrue("\(error)".contains("unexpected"), "\(error)")
        }
        XCTAssertThrowsError(try Linear(4, 8, rng: &rng).load(from: path + ".missing"))
    }

    /// The files must be readable by Python's safetensors: F32/F16 through `safetensors.numpy`; BF16, which numpy has
    /// no type for, by reading the header with `json` and widening the 16-bit words with numpy (the layout the format
    /// specifies). Skipped when python3 or the packages are absent (scripts/setup.sh installs them). Values are
    /// compared, not just shapes.
    func testSavedFilesReadInPythonSafetensors() throws {
        var rng = SeededRandom(seed: 8)
        let model = Linear(3, 2, rng: &rng)
        for dtype in [SafetensorsDType.f32, .f16, .bf16] {
            let path = tempPath("python-\(dtype.rawValue)")
            defer { try? FileManager.default.removeItem(atPath: path) }
            try model.save(to: path, dtype: dtype)
            let loader = dtype == .bf16 ? "numpy" : "safetensors.numpy"
            let load = dtype == .bf16
                ? "import json, struct, numpy as np\n"
                    + "b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])\n"
                    + "t = {k: (np.frombuffer(b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]], dtype='<u2')"
                    + ".astype(np.uint32) << 16).view(np.float32).reshape(v['shape']) for k, v in h.items() "
                    + "if k != '__metadata__' and v['dtype'] == 'BF16'}\n"
                : "t = load_file(sys.argv[1])\n"
            let script = "import sys\ntry:\n from \(loader) import \(dtype == .bf16 ? "ndarray" : "load_file")\n"
                + "except Exception:\n sys.exit(3)\n" + load
                + "print(sorted(t), tuple(t['weight'].shape), ' '.join('%.6f' % float(x) for x in t['weight'].reshape(-1)))\n"
            let proc = Process()
            proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            proc.arguments = ["python3", "-c", script, path]
            let pipe = Pipe()
            proc.standardOutput = pipe
            do { try proc.run() } catch { throw XCTSkip("python3 not available") }
            let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            proc.waitUntilExit()
            if proc.terminationStatus == 3 { throw XCTSkip("python \(loader) not importable") }
            XCTAssertEqual(proc.terminationStatus, 0, "\(dtype)")
            XCTAssertTrue(out.hasPrefix("['bias', 'weight'] (2, 3) "), out)
            let values = out.split(separator: " ").suffix(6).compactMap { Float($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            XCTAssertEqual(values.count, 6, out)
            let tol: Float = dtype == .f32 ? 1e-6 : dtype == .f16 ? 1e-3 : 8e-3
            for (v, w) in zip(values, model.weight.scalars) { XCTAssertEqual(v, w, accuracy: tol, "\(dtype)") }
        }
    }
}
