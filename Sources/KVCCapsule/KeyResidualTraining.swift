import Foundation
import KVCBackbone
import KVCCollect
import KVCCore
import KVCTensor

/// Trains the `KeyResidualMLP` of a capsule on collected caches with the project's autodiff (KVCTensor), layer by
/// layer, on top of an already fitted linear reconstructor.
///
/// Loss per step (a batch of (sample, KV head) spans): MSE of the normalised residual of the dropped keys, plus
/// `klWeight` x the attention-geometry term: KL between the softmax attention of the span's collected text queries
/// (the query heads of that KV head) over the true keys and over the capsule's keys (retained as stored, dropped rebuilt).
/// Every `validationEvery`-th sample is held out; after a layer trains, its MLP is kept only if it lowers the held-out
/// attention KL below the linear map's (measured through the inference path, `KeyResidualMLP.addResidual`).
/// Layers are independent (each seeded with `seed + layer`), so a run resumed from its per-layer checkpoint is
/// bit-identical to an uninterrupted one.
public struct KeyResidualTraining {
    public struct Options: Sendable {
        public var hidden = 128
        public var epochs = 6
        public var batch = 24
        public var learningRate: Float = 2e-3
        public var weightDecay: Float = 0.01
        public var warmupSteps = 20
        public var klWeight: Float = 1
        public var seed: UInt64 = 1
        public init() {}
    }

    public struct LayerReport: Codable, Sendable {
        public var layer: Int
        public var kept: Bool
        public var keyErrorLinear: Double
        public var keyErrorMLP: Double
        public var attentionKLLinear: Double
        public var attentionKLMLP: Double
        enum CodingKeys: String, CodingKey {
            case layer, kept, keyErrorLinear = "key_rel_error_linear", keyErrorMLP = "key_rel_error_mlp"
            case attentionKLLinear = "attention_kl_linear", attentionKLMLP = "attention_kl_mlp"
        }
    }

    public var options: Options
    public var budget: CapsuleBudget
    public var policy: RetentionPolicy
    public var neighbours: Int
    public var validationEvery: Int
    /// Per-layer settings (nil: every layer uses `budget` and `policy` and trains an MLP); only layers whose
    /// reconstructor is `mlp` train one.
    public var layers: [CapsuleLayerSettings]?

    public init(options: Options, budget: CapsuleBudget, policy: RetentionPolicy, neighbours: Int, validationEvery: Int,
                layers: [CapsuleLayerSettings]? = nil) {
        self.options = options
        self.budget = budget
        self.policy = policy
        self.layers = layers
        self.neighbours = neighbours
        self.validationEvery = validationEvery
    }

    /// One (sample, KV head) span of one layer, prepared for training and validation.
    struct Span {
        var features: [Float]           // [dropped, inputSize]
        var target: [Float]             // normalised residual [dropped, d]
        var queries: [Float]            // rotated [group * textCount, d]
        var droppedPositions: [Int]
        var droppedCount: Int
        var baseLogits: [Float]         // [rows, retained + dropped]: stored retained keys, then linear predictions
        var trueLogits: [Float]         // [rows, retained + dropped], same column order
        var rows: Int
        var head: Int
        // For validation through the inference path.
        var neighbours: GridNeighbours
        var retainedRotated: [Float]
        var linearRotated: [Float]
        var trueDropped: [Float]         // rotated [dropped, d]
        var positions: [Int32]
    }

    /// Trains every layer, resuming from `checkpointPath` when it holds finished layers of the same recipe.
    public func run(samples: [CacheSample], layout: CacheLayout, linear: LinearKeyReconstructor, rope: RotaryEmbedding,
                    checkpointPath: String, metricsPath: String, fingerprint: String,
                    log: (String) -> Void) throws -> (KeyResidualMLP, [LayerReport]) {
        let d = layout.headDim
        var model = KeyResidualMLP(layers: Array(repeating: nil, count: layout.layers), kvHeads: layout.kvHeads, headDim: d,
                                   slots: neighbours, hidden: options.hidden)
        var reports: [LayerReport] = []
        var first = 0
        if let resumed = try Self.loadCheckpoint(path: checkpointPath, fingerprint: fingerprint, into: &model) {
            (first, reports) = resumed
            log("resuming key MLP training at layer \(first) of \(layout.layers) from \(checkpointPath)")
        }
        try dropMetrics(fromLayer: first, path: metricsPath)
        let fit = CapsuleFit(budget: budget, policy: policy, neighbours: neighbours, layers: layers)
        let neighbourhoods = samples.map { fit.neighbourhoods($0, layout: layout) }
        let bar = Progress("train key MLP", total: layout.layers - first, unit: "layers")
        for l in first..<layout.layers {
            guard layers == nil || fit.settings(layer: l).reconstructor == .mlp else {
                try Self.saveCheckpoint(model: model, completed: l + 1, reports: reports, fingerprint: fingerprint, path: checkpointPath)
                bar.advance()
                continue
            }
            var train: [Span] = [], held: [Span] = []
            // Key RMS of the layer in the de-rotated frame (= rotated frame: rotations keep norms).
            var sq = 0.0, count = 0
            for s in samples { for e in layerKeys(s, layer: l, layout: layout) { sq += Double(e * e); count += 1 } }
            let scale = Float((sq / Double(max(count, 1))).squareRoot()) + 1e-6
            for (i, s) in samples.enumerated() {
                for h in 0..<layout.kvHeads {
                    let plan = fit.settings(layer: l).plan(tokens: s.visionCount, headDim: d)
                    let span = prepare(s, neighbours: neighbourhoods[i][l][h], plan: plan, layer: l, head: h, layout: layout, linear: linear,
                                       rope: rope, scale: scale)
                    guard span.droppedCount > 0 else { continue }
                    if i % validationEvery == 0 { held.append(span) } else { train.append(span) }
                }
            }
            let trained = try trainLayer(l, train: train, scale: scale, layout: layout, rope: rope, metricsPath: metricsPath, log: log)
            var candidate = model
            candidate.layers[l] = trained
            let report = validate(layer: l, held: held, model: candidate, rope: rope, layout: layout)
            model.layers[l] = report.kept ? trained : nil
            reports.append(report)
            try appendMetrics(["layer": l, "event": "validation", "kept": report.kept ? 1 : 0,
                               "key_rel_error_linear": report.keyErrorLinear, "key_rel_error_mlp": report.keyErrorMLP,
                               "attention_kl_linear": report.attentionKLLinear, "attention_kl_mlp": report.attentionKLMLP],
                              to: metricsPath)
            log(String(format: "layer %d: held-out key error linear %.4f -> mlp %.4f, attention KL %.5f -> %.5f%@", l,
                       report.keyErrorLinear, report.keyErrorMLP, report.attentionKLLinear, report.attentionKLMLP,
                       report.kept ? "" : " (not kept: the linear map is better here)"))
            try Self.saveCheckpoint(model: model, completed: l + 1, reports: reports, fingerprint: fingerprint, path: checkpointPath)
            bar.advance()
        }
        return (model, reports)
    }

    private func layerKeys(_ s: CacheSample, layer l: Int, layout: CacheLayout) -> [Float] {
        let n = s.visionCount * layout.headDim * layout.kvHeads, base = l * n
        return HalfConversion.halfToFloat(Array(s.keys[base..<(base + n)]))
    }

    func prepare(_ s: CacheSample, neighbours nb: GridNeighbours, plan: SpanPlan, layer l: Int, head h: Int, layout: CacheLayout,
                 linear: LinearKeyReconstructor, rope: RotaryEmbedding, scale: Float) -> Span {
        let d = layout.headDim, n = s.visionCount, t = s.textCount, group = layout.queryHeads / layout.kvHeads
        let base = ((l * layout.kvHeads + h) * n) * d
        let keys = HalfConversion.halfToFloat(Array(s.keys[base..<(base + n * d)]))
        let retained = StoredMatrix(nb.retained.flatMap { Array(keys[($0 * d)..<(($0 + 1) * d)]) }, rows: nb.retained.count,
                                    cols: d, precision: plan.keyPrecision).floats()
        var lin = [Float](repeating: 0, count: nb.dropped.count * d)
        _ = retained.withUnsafeBufferPointer {
            linear.reconstruct(layer: l, head: h, neighbours: nb, retainedKeys: $0.baseAddress!, positions: s.visionPositions, into: &lin)
        }
        let droppedPositions = nb.dropped.map { s.visionPositions[$0] }
        let trueDropped = nb.dropped.flatMap { Array(keys[($0 * d)..<(($0 + 1) * d)]) }
        let linDerotated = rope.rotateRows(lin, positions: droppedPositions, sign: -1)
        let trueDerotated = rope.rotateRows(trueDropped, positions: droppedPositions, sign: -1)
        let x = KeyResidualMLP.features(neighbours: nb, retained: rope.rotateRows(retained, positions: nb.retained.map { s.visionPositions[$0] }, sign: -1),
                                        linear: linDerotated, head: h, kvHeads: layout.kvHeads, headDim: d, slots: neighbours, scale: scale)
        let target = zip(trueDerotated, linDerotated).map { ($0 - $1) / scale }
        var q = [Float]()
        for g in 0..<group {
            let qb = ((l * layout.queryHeads + h * group + g) * t) * d
            q += HalfConversion.halfToFloat(Array(s.queries[qb..<(qb + t * d)]))
        }
        let rows = group * t, cols = nb.retained.count + nb.dropped.count
        let modelKeys = retained + lin, trueKeys = nb.retained.flatMap { Array(keys[($0 * d)..<(($0 + 1) * d)]) } + trueDropped
        var baseLogits = [Float](repeating: 0, count: rows * cols), trueLogits = baseLogits
        let invSqrt = 1 / Float(d).squareRoot()
        BLAS.gemm(transB: true, m: rows, n: cols, k: d, alpha: invSqrt, a: q, b: modelKeys, c: &baseLogits)
        BLAS.gemm(transB: true, m: rows, n: cols, k: d, alpha: invSqrt, a: q, b: trueKeys, c: &trueLogits)
        return Span(features: x, target: target, queries: q, droppedPositions: droppedPositions.map { Int($0) },
                    droppedCount: nb.dropped.count, baseLogits: baseLogits, trueLogits: trueLogits, rows: rows, head: h,
                    neighbours: nb, retainedRotated: retained, linearRotated: lin, trueDropped: trueDropped,
                    positions: s.visionPositions)
    }

    private func trainLayer(_ l: Int, train: [Span], scale: Float, layout: CacheLayout, rope: RotaryEmbedding, metricsPath: String,
                            log: (String) -> Void) throws -> KeyResidualMLP.Layer {
        let d = layout.headDim
        let width = KeyResidualMLP.inputSize(headDim: d, slots: neighbours, kvHeads: layout.kvHeads)
        var rng = SeededRandom(seed: options.seed &* 1000 &+ UInt64(l))
        let mlp = MLP(sizes: [width, options.hidden, d], activation: .relu, rng: &rng)
        // The residual starts at zero: the MLP begins as the linear reconstructor and learns a correction.
        mlp.layers[1].weight.data.update(repeating: 0, count: mlp.layers[1].weight.count)
        if let b = mlp.layers[1].bias { b.data.update(repeating: 0, count: b.count) }
        let optimizer = AdamW(parameters: mlp.parameters, learningRate: options.learningRate, weightDecay: options.weightDecay)
        let stepsPerEpoch = max(1, (train.count + options.batch - 1) / options.batch)
        let schedule = WarmupCosineSchedule(baseLR: options.learningRate, warmupSteps: options.warmupSteps,
                                            totalSteps: stepsPerEpoch * options.epochs, minLR: options.learningRate * 0.05)
        var step = 0
        for epoch in 0..<options.epochs {
            var order = Array(0..<train.count)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.nextInt(below: i + 1)) }
            var sumMSE = 0.0, sumKL = 0.0, batches = 0
            for start in stride(from: 0, to: order.count, by: options.batch) {
                let batch = order[start..<min(start + options.batch, order.count)].map { train[$0] }
                let x = Tensor(shape: [batch.reduce(0) { $0 + $1.droppedCount }, width], values: batch.flatMap(\.features))
                let y = Tensor(shape: [x.shape[0], d], values: batch.flatMap(\.target))
                let out = mlp(x)
                let mse = mseLoss(out, y)
                var kl: Tensor?
                var row = 0
                for span in batch {
                    let r = out.slice(axis: 0, row..<(row + span.droppedCount)) * scale
                    row += span.droppedCount
                    let rotated = r.rope(positions: span.droppedPositions, base: Float(rope.base), layout: .interleaved)
                    let q = Tensor(shape: [span.rows, d], values: span.queries)
                    let cols = span.baseLogits.count / span.rows, kept = cols - span.droppedCount
                    let base = Tensor(shape: [span.rows, cols], values: span.baseLogits)
                    let delta = matmul(q, rotated, transposeB: true) * (1 / Float(d).squareRoot())
                    let logits = Tensor.concat([base.slice(axis: 1, 0..<kept), base.slice(axis: 1, kept..<cols) + delta], axis: 1)
                    let term = klDivergenceLoss(logits: logits, target: Tensor(shape: [span.rows, cols], values: span.trueLogits))
                    kl = kl.map { $0 + term } ?? term
                }
                let klMean = (kl ?? Tensor(scalar: 0)) * (1 / Float(batch.count))
                let loss = mse + options.klWeight * klMean
                try NumericalCheck.loss(Double(loss.item), step: step, layer: l)
                optimizer.zeroGrad()
                loss.backward()
                try NumericalCheck.gradients(mlp.namedParameters, step: step, layer: l)
                _ = clipGradNorm(mlp.parameters, maxNorm: 1)
                optimizer.learningRate = schedule.learningRate(at: step)
                optimizer.step()
                sumMSE += Double(mse.item); sumKL += Double(klMean.item); batches += 1
                step += 1
            }
            try appendMetrics(["layer": l, "event": "epoch", "epoch": epoch, "step": step,
                               "train_mse": sumMSE / Double(max(batches, 1)), "train_kl": sumKL / Double(max(batches, 1)),
                               "lr": Double(optimizer.learningRate)], to: metricsPath)
        }
        let p = mlp.layers
        return KeyResidualMLP.Layer(scale: scale, w1: p[0].weight.scalars, b1: p[0].bias!.scalars, w2: p[1].weight.scalars,
                                    b2: p[1].bias!.scalars)
    }

    private func validate(layer l: Int, held: [Span], model: KeyResidualMLP, rope: RotaryEmbedding, layout: CacheLayout) -> LayerReport {
        let d = layout.headDim
        var errLinear = 0.0, errMLP = 0.0, norm = 0.0, klLinear = 0.0, klMLP = 0.0, rows = 0
        for span in held {
            let head = span.head
            var rebuilt = span.linearRotated
            model.addResidual(layer: l, head: head, neighbours: span.neighbours, retainedKeys: span.retainedRotated,
                              positions: span.positions, rope: rope, dropped: &rebuilt)
            for i in 0..<span.trueDropped.count {
                let x = Double(span.trueDropped[i])
                errLinear += pow(Double(span.linearRotated[i]) - x, 2)
                errMLP += pow(Double(rebuilt[i]) - x, 2)
                norm += x * x
            }
            let cols = span.baseLogits.count / span.rows, kept = cols - span.droppedCount
            var logits = span.baseLogits
            let q = span.queries
            for r in 0..<span.rows {
                for c in 0..<span.droppedCount {
                    var dot: Float = 0
                    for e in 0..<d { dot += q[r * d + e] * rebuilt[c * d + e] }
                    logits[r * cols + kept + c] = dot / Float(d).squareRoot()
                }
            }
            klLinear += rowKL(span.trueLogits, span.baseLogits, rows: span.rows, cols: cols)
            klMLP += rowKL(span.trueLogits, logits, rows: span.rows, cols: cols)
            rows += span.rows
        }
        let kl0 = klLinear / Double(max(rows, 1)), kl1 = klMLP / Double(max(rows, 1))
        return LayerReport(layer: l, kept: kl1 < kl0, keyErrorLinear: (errLinear / max(norm, 1e-30)).squareRoot(),
                           keyErrorMLP: (errMLP / max(norm, 1e-30)).squareRoot(), attentionKLLinear: kl0, attentionKLMLP: kl1)
    }
}

/// Sum over rows of KL(softmax(p) || softmax(q)) for logits `[rows, cols]`.
private func rowKL(_ p: [Float], _ q: [Float], rows: Int, cols: Int) -> Double {
    var total = 0.0
    for r in 0..<rows {
        let a = p[(r * cols)..<((r + 1) * cols)].map(Double.init), b = q[(r * cols)..<((r + 1) * cols)].map(Double.init)
        let ma = a.max() ?? 0, mb = b.max() ?? 0
        let la = log(a.reduce(0) { $0 + exp($1 - ma) }) + ma, lb = log(b.reduce(0) { $0 + exp($1 - mb) }) + mb
        for j in 0..<cols { total += exp(a[j] - la) * ((a[j] - la) - (b[j] - lb)) }
    }
    return total
}

/// NaN or Inf stops training with the step, layer and tensor named.
enum NumericalCheck {
    static func loss(_ value: Double, step: Int, layer: Int) throws {
        guard value.isFinite else { throw KVCError("key MLP training: loss is \(value) at step \(step) of layer \(layer)") }
    }
    static func gradients(_ parameters: [(name: String, tensor: Tensor)], step: Int, layer: Int) throws {
        for (name, t) in parameters {
            guard let g = t.gradPointer else { continue }
            for i in 0..<t.count where !g[i].isFinite {
                throw KVCError("key MLP training: gradient of layer \(layer) '\(name)' is \(g[i]) at step \(step) (element \(i))")
            }
        }
    }
}

/// One JSON object per line, appended (metrics of a resumed run continue the file).
func appendMetrics(_ fields: [String: Any], to path: String) throws {
    let data = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
    if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
    guard let handle = FileHandle(forWritingAtPath: path) else { throw KVCError.file(path, "cannot append metrics") }
    defer { try? handle.close() }
    handle.seekToEndOfFile()
    handle.write(data + Data("\n".utf8))
}

/// Drops the metric lines of layers from `layer` on: a killed run logged them after its last checkpoint, and the
/// resumed run logs them again.
func dropMetrics(fromLayer layer: Int, path: String) throws {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
    let kept = text.split(separator: "\n").filter { line in
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let l = object["layer"] as? Int else { return false }
        return l < layer
    }
    try AtomicFile.write(kept.map { $0 + "\n" }.joined(), to: path)
}

extension KeyResidualTraining {
    /// Writes the finished layers (float32, so a resumed run continues bit-identically) and their reports, atomically.
    static func saveCheckpoint(model: KeyResidualMLP, completed: Int, reports: [LayerReport], fingerprint: String,
                               path: String) throws {
        var writer = SafetensorsWriter()
        try model.add(to: &writer, dtype: .f32)
        writer.metadata["key_mlp_completed_layers"] = String(completed)
        writer.metadata["key_mlp_fingerprint"] = fingerprint
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]   // the same run writes the same bytes (kill tests compare them)
        writer.metadata["key_mlp_reports"] = String(decoding: try encoder.encode(reports), as: UTF8.self)
        try writer.write(to: path)
    }

    /// The finished layers and reports of a checkpoint of the same run (same recipe and caches), or nil.
    static func loadCheckpoint(path: String, fingerprint: String, into model: inout KeyResidualMLP) throws
        -> (completed: Int, reports: [LayerReport])? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let file = try SafetensorsFile(path: path)
        guard file.metadata["key_mlp_fingerprint"] == fingerprint else {
            throw KVCError.file(path, "checkpoint belongs to another recipe or cache set; move it away to start over")
        }
        guard let completed = file.metadata["key_mlp_completed_layers"].flatMap(Int.init),
              (0...model.layers.count).contains(completed),
              let json = file.metadata["key_mlp_reports"],
              let reports = try? JSONDecoder().decode([LayerReport].self, from: Data(json.utf8)), reports.count == completed else {
            throw KVCError.file(path, "checkpoint metadata is incomplete")
        }
        let loaded = try KeyResidualMLP.read(from: file, path: path, layers: model.layers.count, kvHeads: model.kvHeads,
                                             headDim: model.headDim, slots: model.slots, hidden: model.hidden)
        for l in 0..<completed { model.layers[l] = loaded.layers[l] }
        return (completed, reports)
    }
}
