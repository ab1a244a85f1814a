import Foundation
import KVCCollect
import KVCCore
import XCTest
@testable import KVCSmolVLM

/// The pieces between the checkpoint and the decoder: rotary layouts, BF16 storage, image grids in the prompt.
final class HFConversionTests: XCTestCase {
    /// llama.cpp's Q/K row order and the dump's inverse map agree: a head vector computed with permuted rows, mapped
    /// back, is the vector computed with the original rows.
    func testRotaryPermutationAndItsInverse() {
        let heads = 2, d = 8, cols = 3
        let weights = (0..<(heads * d * cols)).map { Float($0) }
        let permuted = HFRotaryLayout.permuteRowsToGGUF(weights.withUnsafeBytes { Array($0) }, heads: heads, rowBytes: cols * 4)
            .withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let x: [Float] = [0.5, -1, 2]
        func apply(_ w: [Float]) -> [Float] {
            (0..<(heads * d)).map { r in (0..<cols).reduce(0) { $0 + w[r * cols + $1] * x[$1] } }
        }
        XCTAssertEqual(HFRotaryLayout.ggufToHF(apply(permuted), headDim: d), apply(weights))
        XCTAssertNotEqual(apply(permuted), apply(weights))
        // GGUF row 2i + s is HF row s·d/2 + i: row 1 of head 0 comes from HF row 4.
        XCTAssertEqual(Array(permuted[cols..<(2 * cols)]), Array(weights[(4 * cols)..<(5 * cols)]))
    }

    /// BF16 values convert to F16 unchanged in F16's normal range; a value beyond it keeps the tensor in BF16.
    func testBFloat16ToHalfOnlyWithinRange() throws {
        let values: [Float] = [1, -0.375, 3.140625, 1024, 6.103515625e-05, 0]
        let bf16 = values.map(HalfConversion.bfloat16Bits).withUnsafeBytes { Array($0) }
        let half = try XCTUnwrap(HFLlamaConversion.bfloat16AsHalf(bf16))
        let back = half.withUnsafeBytes { HalfConversion.halfToFloat(Array($0.bindMemory(to: UInt16.self))) }
        XCTAssertEqual(back, values)
        let tooLarge = [Float(1), 131_072].map(HalfConversion.bfloat16Bits).withUnsafeBytes { Array($0) }
        XCTAssertNil(HFLlamaConversion.bfloat16AsHalf(tooLarge))
    }

    /// The grid of the image tokens after pixel shuffle, where they sit in the prompt: what the capsules use.
    func testPromptReportsTheImageGrid() throws {
        let dir = try Fixture.directory("idefics3")
        let model = try SmolVLM(directory: dir)
        let ids = try SafetensorsFile(path: dir + "/expected.safetensors").ints("input_ids")
        let hidden = model.decoder.config.hiddenSize
        let (pieces, grids) = try model.prompt(tokenIds: ids, imageTokens: [[Float](repeating: 0.25, count: 9 * hidden)])
        let start = try XCTUnwrap(ids.firstIndex(of: try XCTUnwrap(model.imageTokenId)))
        XCTAssertEqual(grids, [ImageGrid(start: start, rows: 3, cols: 3)])
        XCTAssertEqual(pieces.reduce(0) { $0 + $1.count }, ids.count)
        XCTAssertEqual(pieces.count, 3)
    }
}
