import XCTest
import KVCCore
import KVCTensor
import KVCGGUF
@testable import KVCBackbone

final class LlamaGraphTests: XCTestCase {
    /// A tiny random Llama (2 layers, grouped heads) small enough for finite differences.
    private func tinyGraph(seed: UInt64) -> LlamaGraph {
        let c = LlamaConfig(layerCount: 2, hiddenSize: 16, intermediateSize: 24, headCount: 4, kvHeadCount: 2, headDim: 4,
                            vocabularySize: 11, contextLength: 64, ropeBase: 10_000, rmsNormEpsilon: 1e-5)
        var rng = SeededRandom(seed: seed)
        func w(_ shape: [Int], _ std: Float = 0.3) -> Tensor { Tensor.randn(shape, std: std, rng: &rng) }
        func norm() -> Tensor { Tensor(shape: [c.hiddenSize], values: (0..<c.hiddenSize).map { _ in 1 + 0.1 * rng.nextNormal() }) }
        let layers = (0..<c.layerCount).map { _ in
            LlamaGraph.LayerWeights(attentionNorm: norm(), q: w([c.queryDim, 16]), k: w([c.kvDim, 16]), v: w([c.kvDim, 16]),
                                    output: w([16, c.queryDim]), ffnNorm: norm(), gate: w([24, 16]), up: w([24, 16]),
                                    down: w([16, 24]))
        }
        return LlamaGraph(config: c, tokenEmbedding: w([11, 16], 1), outputNorm: norm(), layers: layers)
    }

    func testGradientsReachTheInputEmbeddingsOnly() {
        let graph = tinyGraph(seed: 1)
        var rng = SeededRandom(seed: 2)
        let input = Tensor.randn([7, 16], rng: &rng)
        let result = gradCheck([input]) { xs in graph.logits(input: xs[0], lengths: [3, 4], logitRows: [2, 5, 6]) }
        XCTAssertTrue(result.passed, "\(result)")
        XCTAssertNil(graph.layers[0].q.grad, "frozen weights get no gradient")
    }

    /// Packing must not leak attention across samples: a sample's logits are the same alone or packed with another.
    func testPackedSamplesAreIndependent() {
        let graph = tinyGraph(seed: 3)
        var rng = SeededRandom(seed: 4)
        let a = Tensor.randn([3, 16], rng: &rng), b = Tensor.randn([5, 16], rng: &rng)
        let packed = Tensor.withNoGrad {
            graph.logits(input: Tensor.concat([a, b], axis: 0), lengths: [3, 5], logitRows: [2, 7])
        }
        let alone = Tensor.withNoGrad { graph.logits(input: b, lengths: [5], logitRows: [4]) }
        for j in 0..<11 { XCTAssertEqual(packed.data[11 + j], alone.data[j], accuracy: 1e-5) }
    }

    /// A shared prefix with two suffixes gives each suffix the logits of prefix + suffix run as one sequence.
    func testSharedPrefixEqualsSeparateSequences() {
        let graph = tinyGraph(seed: 5)
        var rng = SeededRandom(seed: 6)
        let prefix = Tensor.randn([4, 16], rng: &rng), s1 = Tensor.randn([2, 16], rng: &rng), s2 = Tensor.randn([3, 16], rng: &rng)
        let tree = Tensor.withNoGrad {
            graph.logits(input: Tensor.concat([prefix, s1, s2], axis: 0),
                         packing: .init(groups: [.init(prefix: 4, suffixes: [2, 3])]), logitRows: [3, 5, 8])
        }
        let separate = Tensor.withNoGrad {
            graph.logits(input: Tensor.concat([prefix, s1, prefix, s2], axis: 0), lengths: [6, 7], logitRows: [3, 5, 12])
        }
        for j in 0..<(3 * 11) { XCTAssertEqual(tree.data[j], separate.data[j], accuracy: 1e-5) }
        let result = gradCheck([prefix, s2]) { xs in
            graph.logits(input: Tensor.concat([xs[0], s1, xs[1]], axis: 0),
                         packing: .init(groups: [.init(prefix: 4, suffixes: [2, 3])]), logitRows: [5, 8])
        }
        XCTAssertTrue(result.passed, "\(result)")
    }

    /// Steering vectors reach the rows the selection names, from layer 1 on, and their gradients are right.
    func testSteeringGradientsAndRows() {
        let graph = tinyGraph(seed: 7)
        var rng = SeededRandom(seed: 8)
        let input = Tensor.randn([6, 16], rng: &rng)
        let perLayer = Tensor.randn([1, 2, 16], std: 0.5, rng: &rng)
        let selection = Tensor.zeros([6, 2])
        selection.data[3 * 2 + 0] = 1   // rows 3 and 4 carry vectors 0 and 1
        selection.data[4 * 2 + 1] = 1
        let result = gradCheck([input, perLayer]) { xs in
            graph.logits(input: xs[0], lengths: [6], logitRows: [2, 5],
                         steering: .init(selection: selection, perLayer: xs[1]))
        }
        XCTAssertTrue(result.passed, "\(result)")
        // Causal: rows before the steered ones are untouched; a later row sees them.
        let (plain, steered) = Tensor.withNoGrad {
            (graph.logits(input: input, lengths: [6], logitRows: [2, 5]),
             graph.logits(input: input, lengths: [6], logitRows: [2, 5], steering: .init(selection: selection, perLayer: perLayer)))
        }
        for j in 0..<11 { XCTAssertEqual(plain.data[j], steered.data[j]) }
        XCTAssertNotEqual(Array(plain.scalars[11...]), Array(steered.scalars[11...]))
    }
}

/// The training graph over the real SmolLM2 weights against the independent numpy float64 reference
/// (Fixtures/llama_reference.json, from scripts/reference/llama_reference.py), packed as one batch.
final class LlamaGraphReferenceTests: XCTestCase {
    func testLogitsMatchTheNumpyReference() throws {
        let graph = try LlamaGraph(file: GGUFFile(path: TestPaths.realModelPath()))
        let cases = try XCTUnwrap(TestPaths.json("llama_reference.json")["cases"] as? [[String: Any]])
        var inputs: [Tensor] = [], lengths: [Int] = [], rows: [Int] = [], expected: [[String: Any]] = []
        var offset = 0
        for c in cases {
            let ids = try XCTUnwrap(c["ids"] as? [Int])
            inputs.append(graph.embed(ids))
            lengths.append(ids.count)
            for p in try XCTUnwrap(c["positions"] as? [[String: Any]]) {
                rows.append(offset + (p["position"] as! Int))
                expected.append(p)
            }
            offset += ids.count
        }
        let logits = Tensor.withNoGrad { graph.logits(input: Tensor.concat(inputs, axis: 0), lengths: lengths, logitRows: rows) }
        let vocab = graph.config.vocabularySize
        for (r, p) in expected.enumerated() {
            for entry in try XCTUnwrap(p["top"] as? [[String: Any]]) {
                let id = entry["id"] as! Int, want = Float(entry["logit"] as! Double)
                XCTAssertEqual(logits.data[r * vocab + id], want, accuracy: 1e-3 * max(1, abs(want)), "row \(r) token \(id)")
            }
        }
    }

    /// A `layered` prompt piece in the inference decoder steers exactly as `LlamaGraph.Steering` does in training.
    func testLayeredPieceMatchesTheTrainingGraphsSteering() throws {
        let file = try GGUFFile(path: TestPaths.realModelPath())
        let graph = try LlamaGraph(file: file), model = try LlamaModel(file: file)
        let c = graph.config
        var rng = SeededRandom(seed: 3)
        let before = [1, 504, 3340, 314], after = [2, 198]
        let vectors = Tensor.randn([2, c.hiddenSize], std: 0.05, rng: &rng)
        let perLayer = Tensor.randn([c.layerCount - 1, 2, c.hiddenSize], std: 0.2, rng: &rng)
        let selection = Tensor.zeros([8, 2])
        selection.data[4 * 2 + 0] = 1
        selection.data[5 * 2 + 1] = 1
        let trained = Tensor.withNoGrad {
            graph.logits(input: Tensor.concat([graph.embed(before), vectors, graph.embed(after)], axis: 0), lengths: [8],
                         logitRows: [7], steering: .init(selection: selection, perLayer: perLayer))
        }
        let served = try model.forward([.tokens(before), .layered(vectors.scalars, count: 2, residual: perLayer.scalars),
                                        .tokens(after)], cache: model.makeCache(precision: .float32))
        let plain = try model.forward([.tokens(before), .embeddings(vectors.scalars, count: 2), .tokens(after)],
                                      cache: model.makeCache(precision: .float32))
        var worst: Float = 0, moved: Float = 0
        for j in 0..<c.vocabularySize {
            worst = max(worst, abs(served[j] - trained.data[j]))
            moved = max(moved, abs(served[j] - plain[j]))
        }
        XCTAssertLessThan(worst, 2e-3, "inference and training disagree on a steered prompt")
        XCTAssertGreaterThan(moved, 0.1, "the residual vectors did not change the logits")
        XCTAssertThrowsError(try model.forward([.layered(vectors.scalars, count: 2, residual: [1, 2])], cache: model.makeCache())) {
            XCTAssertTrue("\($0)".contains("residual values for 2 positions"), "\($0)")
        }
    }
}
