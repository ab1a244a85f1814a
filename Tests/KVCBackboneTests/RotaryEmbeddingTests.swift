import XCTest
import KVCCore
@testable import KVCBackbone

final class RotaryEmbeddingTests: XCTestCase {
    private let rope = RotaryEmbedding(headDim: 64, base: 100_000)

    private func randomVector(_ rng: inout SeededRandom) -> [Float] { (0..<64).map { _ in rng.nextNormal() } }
    private func dot(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

    func testDerotateUndoesRotateAndKeepsNorm() {
        var rng = SeededRandom(seed: 3)
        for position in [0, 1, 17, 8191] {
            let v = randomVector(&rng)
            let r = rope.rotate(v, position: position)
            XCTAssertEqual(dot(r, r), dot(v, v), accuracy: 1e-3)
            for (a, b) in zip(rope.derotate(r, position: position), v) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        }
        XCTAssertEqual(rope.rotate([1, 2, 3, 4] + [Float](repeating: 0, count: 60), position: 0),
                       [1, 2, 3, 4] + [Float](repeating: 0, count: 60))
    }

    /// q·k after rotation depends only on the distance between the positions.
    func testScoresDependOnRelativePosition() {
        var rng = SeededRandom(seed: 4)
        let q = randomVector(&rng), k = randomVector(&rng)
        let near = dot(rope.rotate(q, position: 10), rope.rotate(k, position: 7))
        let far = dot(rope.rotate(q, position: 5010), rope.rotate(k, position: 5007))
        XCTAssertEqual(near, far, accuracy: 1e-3)
    }

    /// GGUF's adjacent pairs are Hugging Face's (i, i + d/2) pairs after llama.cpp's row permutation: rotating in
    /// one layout and permuting equals permuting and rotating in the other.
    func testAdjacentPairsEqualPermutedRotateHalf() {
        var rng = SeededRandom(seed: 5)
        let d = 64, half = d / 2
        let hf = randomVector(&rng)
        // llama.cpp's permute: GGUF element 2i is HF element i, GGUF element 2i+1 is HF element i + d/2.
        var gguf = [Float](repeating: 0, count: d)
        for i in 0..<half { gguf[2 * i] = hf[i]; gguf[2 * i + 1] = hf[i + half] }
        let position = 123
        var hfRotated = [Float](repeating: 0, count: d)
        for i in 0..<half {
            let angle = Double(position) * pow(100_000, -Double(2 * i) / Double(d))
            let c = Float(cos(angle)), s = Float(sin(angle))
            hfRotated[i] = hf[i] * c - hf[i + half] * s
            hfRotated[i + half] = hf[i + half] * c + hf[i] * s
        }
        let ggufRotated = rope.rotate(gguf, position: position)
        for i in 0..<half {
            XCTAssertEqual(ggufRotated[2 * i], hfRotated[i], accuracy: 1e-5)
            XCTAssertEqual(ggufRotated[2 * i + 1], hfRotated[i + half], accuracy: 1e-5)
        }
    }
}
