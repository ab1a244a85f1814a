import Foundation
import XCTest
import KVCBackbone
import KVCCapsule
import KVCCore

/// An adapter made for another backbone refuses to load and says why: layer count, KV heads, head size, RoPE base,
/// or the backbone + front-end fingerprint (which is how another front end, and so another image grid, is caught).
final class AdapterMismatchTests: XCTestCase {
    private let smolLM2 = LlamaConfig(layerCount: 30, hiddenSize: 576, intermediateSize: 1536, headCount: 9, kvHeadCount: 3,
                                      headDim: 64, vocabularySize: 49152, contextLength: 8192, ropeBase: 100_000,
                                      rmsNormEpsilon: 1e-5)

    private func exported(layers: Int = 30, kvHeads: Int = 3, headDim: Int = 64, ropeBase: Double = 100_000,
                          fingerprint: String = "fp-smollm2+frontend-A") throws -> String {
        let adapter = CapsuleAdapter(fingerprint: fingerprint, layers: layers, kvHeads: kvHeads, headDim: headDim,
                                     ropeBase: ropeBase,
                                     settings: CapsuleSettings(budget: CapsuleBudget(ratio: 0.6, keyRatio: 0.5), keys: .nearest),
                                     recipe: "")
        let path = try ChildProcess.temporaryDirectory("adapter") + "/a.kvcap"
        try adapter.export(to: path)
        return path
    }

    private func assertRefused(_ path: String, config: LlamaConfig? = nil, fingerprint: String? = nil,
                               saying parts: [String], line: UInt = #line) {
        XCTAssertThrowsError(try CapsuleAdapter.load(path: path, config: config, fingerprint: fingerprint), line: line) { error in
            for part in parts + [path] {
                XCTAssertTrue("\(error)".contains(part), "'\(part)' missing from: \(error)", line: line)
            }
        }
    }

    func testAdapterForAnotherBackboneIsRefusedWithTheReason() throws {
        // The matching backbone loads.
        XCTAssertNoThrow(try CapsuleAdapter.load(path: try exported(), config: smolLM2, fingerprint: "fp-smollm2+frontend-A"))
        assertRefused(try exported(layers: 24), config: smolLM2, saying: ["24 layers", "this backbone has 30"])
        assertRefused(try exported(kvHeads: 5), config: smolLM2, saying: ["5 KV heads", "x 3 x"])
        assertRefused(try exported(headDim: 128), config: smolLM2, saying: ["head dim 128", "x 64"])
        assertRefused(try exported(ropeBase: 10_000), config: smolLM2, saying: ["RoPE base 10000", "100000"])
        // Same decoder, another front end (another image grid): the fingerprint differs.
        assertRefused(try exported(), config: smolLM2, fingerprint: "fp-smollm2+frontend-B",
                      saying: ["trained for backbone fp-smollm2+frontend-A", "fp-smollm2+frontend-B"])
    }
}
