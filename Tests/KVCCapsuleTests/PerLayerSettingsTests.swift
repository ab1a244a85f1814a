import Foundation
import XCTest
import KVCBackbone
import KVCCollect
import KVCCore
@testable import KVCCapsule

/// The recipe's `layers:` section and adapters that carry per-layer settings.
final class PerLayerSettingsTests: XCTestCase {
    private let head = """
        kind: capsule
        caches: runs/caches
        run_dir: runs/x
        ratio: 0.6
        key_ratio: 0.5

        """

    private func recipe(_ layers: String) throws -> CapsuleRecipe {
        let text = head + layers
        return try CapsuleRecipe(RecipeSection.parse(text, file: "r.yaml"), text: text)
    }

    private func global(_ r: CapsuleRecipe) -> CapsuleLayerSettings {
        CapsuleLayerSettings(budget: r.fit.budget, policy: r.fit.policy, reconstructor: .linear)
    }

    func testLayerSectionSetsRangesAndSingleLayers() throws {
        let r = try recipe("""
            layers:
              "0-1": {ratio: 0.7}
              "2": {reconstructor: nearest, key_dtype: int8}
              "3-4": {ratio: 0.5, retention: scored}
            """)
        let layers = try XCTUnwrap(CapsuleLayerRecipe.expand(r.layerOverrides, layers: 5, file: "r.yaml", global: global(r)))
        XCTAssertEqual(layers.map(\.budget.ratio), [0.7, 0.7, 0.6, 0.5, 0.5])
        // A changed ratio moves the key ratio by as much (both sides change alike); an explicit one is kept.
        for (a, b) in zip(layers.map(\.budget.keyRatio), [0.6, 0.6, 0.5, 0.4, 0.4]) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        XCTAssertEqual(layers.map(\.policy), [.strided, .strided, .strided, .scored, .scored])
        XCTAssertEqual(layers.map(\.reconstructor), [.linear, .linear, .nearest, .linear, .linear])
        XCTAssertEqual(layers.map(\.budget.keyPrecision), [.float16, .float16, .int8, .float16, .float16])
        XCTAssertNil(try CapsuleLayerRecipe.expand(try recipe("").layerOverrides, layers: 5, file: "r.yaml", global: global(r)),
                     "no section: every layer uses the global settings")
    }

    func testLayerSectionErrorsNameTheKeyTheLayerAndTheAllowedValues() throws {
        func expectError(_ layers: String, _ fragments: [String], line: UInt = #line) {
            XCTAssertThrowsError(try recipe(layers), line: line) { error in
                for f in fragments { XCTAssertTrue("\(error)".contains(f), "'\(f)' not in: \(error)", line: line) }
            }
        }
        expectError("layers:\n  \"2\": {retention: random}\n", ["r.yaml", "layers.2.retention", "strided, checkerboard, scored"])
        expectError("layers:\n  \"0-1\": {rank: 3}\n", ["unknown key layers.0-1.rank", "ratio", "key_ratio", "reconstructor"])
        expectError("layers:\n  \"1\": {reconstructor: mlp}\n", ["layers.1.reconstructor", "linear, nearest"])
        expectError("layers:\n  \"1\": {ratio: 0.3, key_ratio: 0.9}\n", ["layers.1.key_ratio", "0.9"])
        expectError("layers:\n  \"0-x\": {ratio: 0.7}\n", ["layers.0-x", "inclusive range"])
        XCTAssertEqual(try recipe("layers:\n  4: {ratio: 0.7}\n").layerOverrides.map(\.layers), [4...4], "an unquoted index")
        expectError("layers:\n  \"0-2\": {ratio: 0.7}\n  \"2-3\": {ratio: 0.5}\n", ["layers.0-2", "layers.2-3", "layer 2"])
        let r = try recipe("layers:\n  \"1\": {ratio: 0.9}\n")
        XCTAssertThrowsError(try CapsuleLayerRecipe.expand(r.layerOverrides, layers: 5, file: "r.yaml", global: global(r))) {
            XCTAssertTrue("\($0)".contains("average 0.6600") && "\($0)".contains("ratio is 0.6"), "\($0)")
        }
        let far = try recipe("layers:\n  \"6\": {retention: scored}\n")
        XCTAssertThrowsError(try CapsuleLayerRecipe.expand(far.layerOverrides, layers: 5, file: "r.yaml", global: global(far))) {
            XCTAssertTrue("\($0)".contains("layers.6") && "\($0)".contains("5 layers"), "\($0)")
        }
    }

    func testPerLayerAdapterRoundTripsAndUniformAdaptersKeepTheirFormat() throws {
        let layout = CacheLayout(layers: 2, kvHeads: 1, queryHeads: 3, headDim: 8)
        let rope = RotaryEmbedding(headDim: 8, base: 100_000)
        let dir = try syntheticCacheDirectory("layers", samples: 10, layout: layout, rope: rope)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let perLayer = [
            CapsuleLayerSettings(budget: CapsuleBudget(ratio: 0.7, keyRatio: 0.6, keyPrecision: .int8), policy: .strided,
                                 reconstructor: .nearest),
            CapsuleLayerSettings(budget: CapsuleBudget(ratio: 0.5, keyRatio: 0.4), policy: .scored, reconstructor: .linear),
        ]
        let fit = CapsuleFit(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.5), layers: perLayer)
        let (model, _) = try fit.run(store: CacheStore(directory: dir), ropeBase: 100_000, progress: false)
        let settings = CapsuleSettings(budget: fit.budget, keys: .linear(model), layers: perLayer)
        let adapter = CapsuleAdapter(fingerprint: "fp", layers: 2, kvHeads: 1, headDim: 8, ropeBase: 100_000, settings: settings,
                                     recipe: "")
        try adapter.export(to: dir + "/a.kvcap")
        let loaded = try CapsuleAdapter.load(path: dir + "/a.kvcap", fingerprint: "fp")
        XCTAssertEqual(loaded.settings.layers, perLayer)
        XCTAssertEqual((0..<2).map { loaded.settings.layer($0) }, perLayer)
        XCTAssertTrue(loaded.settings.isQuestionAware)
        XCTAssertTrue(try AdapterFile.read(path: dir + "/a.kvcap").metadata["kvcapsule"]!.contains("\"kind\":\"kvcapsule-adapter-2\""),
                      "a reader without per-layer settings must refuse this adapter")
        try loaded.export(to: dir + "/b.kvcap")
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/a.kvcap"), FileManager.default.contents(atPath: dir + "/b.kvcap"))

        // Without per-layer settings the header is the one older readers know.
        let uniform = CapsuleAdapter(fingerprint: "fp", layers: 2, kvHeads: 1, headDim: 8, ropeBase: 100_000,
                                     settings: CapsuleSettings(budget: fit.budget, keys: .linear(model)), recipe: "")
        try uniform.export(to: dir + "/u.kvcap")
        let header = try XCTUnwrap(AdapterFile.read(path: dir + "/u.kvcap").metadata["kvcapsule"])
        XCTAssertTrue(header.contains("\"kind\":\"kvcapsule-adapter\"") && !header.contains("layer_settings"), header)
        XCTAssertNil(try CapsuleAdapter.load(path: dir + "/u.kvcap").settings.layers)

        // The shipped adapters still load, as uniform strided capsules.
        let checkpoints = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../checkpoints")
            .standardized.path
        for r in ["0.4", "0.6", "0.8"] {
            let path = checkpoints + "/capsule-r\(r).kvcap"
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let shipped = try CapsuleAdapter.load(path: path)
            XCTAssertNil(shipped.settings.layers, path)
            XCTAssertEqual(shipped.settings.layer(29).policy, .strided, path)
            XCTAssertEqual(shipped.settings.layer(0).budget, shipped.settings.budget, path)
        }
    }
}
