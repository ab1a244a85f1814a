import Foundation
import XCTest
@testable import KVCGGUF
import KVCCore

/// A small file written by the `gguf` Python package (Fixtures/synthetic_types.gguf) with every metadata value type
/// and a tensor of every type we dequantize, against the values `gguf` itself decodes (synthetic_types.json).
final class GGUFSyntheticTests: XCTestCase {
    func testEveryMetadataTypeDecodes() throws {
        let f = try GGUFFile(path: TestPaths.fixture("synthetic_types.gguf"))
        XCTAssertEqual(f.metadata["test.u8"], .uint8(200))
        XCTAssertEqual(f.metadata["test.i8"], .int8(-100))
        XCTAssertEqual(f.metadata["test.u16"], .uint16(60000))
        XCTAssertEqual(f.metadata["test.i16"], .int16(-30000))
        XCTAssertEqual(f.metadata["test.u32"], .uint32(4_000_000_000))
        XCTAssertEqual(f.metadata["test.i32"], .int32(-2_000_000_000))
        XCTAssertEqual(f.metadata["test.u64"], .uint64(1 << 63 + 5))
        XCTAssertEqual(f.metadata["test.i64"], .int64(-(1 << 62)))
        XCTAssertEqual(f.metadata["test.f32"], .float32(0.1))
        XCTAssertEqual(f.metadata["test.f64"], .float64(-1e300))
        XCTAssertEqual(f.metadata["test.bool"], .bool(true))
        XCTAssertEqual(try f.string("test.string"), "héllo 世界 🙂")
        XCTAssertEqual(try f.stringArray("test.strings"), ["a", "", "ÿ", "<|im_end|>"])
        XCTAssertEqual(try f.intArray("test.ints"), [1, -2, 3])
        XCTAssertEqual(try f.floatArray("test.floats"), [0.5, -1.25])
        XCTAssertEqual(try f.int("test.u8"), 200)
        XCTAssertEqual(try f.int("test.i64"), -(1 << 62))
        assertKVCError(try f.int("test.u64"), contains: ["test.u64", "does not fit"])

        let ref = try TestPaths.json("synthetic_types.json")
        let meta = try XCTUnwrap(ref["metadata"] as? [String: Any])
        XCTAssertEqual(Set(f.metadata.keys), Set(meta.keys))
    }

    func testEveryDequantizedTypeMatchesPythonGGUF() throws {
        let f = try GGUFFile(path: TestPaths.fixture("synthetic_types.gguf"))
        let ref = try TestPaths.json("synthetic_types.json")
        var types = Set<GGMLType>()
        for case let r as [String: Any] in try XCTUnwrap(ref["tensors"] as? [Any]) {
            let name = try XCTUnwrap(r["name"] as? String)
            let t = try f.tensor(name)
            XCTAssertEqual(t.type.name, r["type"] as? String)
            XCTAssertEqual(t.dims, r["dims"] as? [Int])
            XCTAssertEqual(t.offset, r["offset"] as? Int)
            XCTAssertEqual(t.byteCount, r["byte_count"] as? Int)
            let expected = try XCTUnwrap(r["values"] as? [Double])
            let got = try f.dequantize(name)
            XCTAssertEqual(got.count, expected.count)
            for (i, (g, e)) in zip(got, expected).enumerated() {
                XCTAssertEqual(Double(g), e, accuracy: abs(e) * 1e-6, "\(name)[\(i)]")
            }
            types.insert(t.type)
        }
        XCTAssertEqual(types, [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1])
    }

    func testWriterRoundTripsThroughReader() throws {
        var w = GGUFWriter()
        w.alignment = 64
        w.set("general.architecture", .string("llama"))
        w.set("a.nested", .array([.array([.int32(1), .int32(2)]), .array([.string("x")])]))
        w.set("a.empty", .array([]))
        w.set("a.bools", .array([.bool(true), .bool(false)]))
        let floats = (0..<96).map { Float($0) * 0.5 - 7 }
        w.addTensor("w", dims: [32, 3], floats: floats)
        w.addTensor("z", dims: [0, 4], floats: [])
        w.addTensor("s", dims: [], floats: [42])
        let f = try GGUFFile(bytes: w.serialize(), name: "roundtrip")
        XCTAssertEqual(f.alignment, 64)
        XCTAssertEqual(f.metadata["a.nested"], .array([.array([.int32(1), .int32(2)]), .array([.string("x")])]))
        XCTAssertEqual(f.metadata["a.empty"], .array([]))
        XCTAssertEqual(f.metadata["a.bools"], .array([.bool(true), .bool(false)]))
        XCTAssertEqual(f.metadataKeys, ["general.architecture", "a.nested", "a.empty", "a.bools", "general.alignment"])
        XCTAssertEqual(try f.dequantize("w"), floats)
        XCTAssertEqual(try f.tensor("w").rowCount, 3)
        XCTAssertEqual(try f.dequantize("z"), [])
        XCTAssertEqual(try f.tensor("s").elementCount, 1)
        XCTAssertEqual(try f.dequantize("s"), [42])
        for t in f.tensors { XCTAssertEqual(t.offset % 64, 0, t.name) }
    }

    func testRowConversionRejectsPartialBlocksAndUnsupportedTypes() throws {
        let src = [UInt8](repeating: 0, count: 64)
        var dst = [Float](repeating: 0, count: 64)
        try src.withUnsafeBytes { s in
            try dst.withUnsafeMutableBufferPointer { d in
                assertKVCError(try GGMLQuant.dequantizeRow(.q4_1, s.baseAddress!, d.baseAddress!, count: 16),
                               contains: ["Q4_1", "16", "32"])
                assertKVCError(try GGMLQuant.dequantizeRow(.q6_K, s.baseAddress!, d.baseAddress!, count: 0),
                               contains: ["unsupported tensor type Q6_K"])
            }
        }
    }

    /// Hand-made blocks whose values are known exactly, independent of any reference implementation.
    func testBlockLayoutsByHand() throws {
        func half(_ x: Float) -> [UInt8] { withUnsafeBytes(of: Float16(x).bitPattern.littleEndian) { Array($0) } }
        // Q4_0: d = 0.5; byte j = low nibble j, high nibble 15 - j -> x[j] = (j - 8) / 2, x[j + 16] = (7 - j) / 2.
        var q40 = half(0.5)
        for j in 0..<16 { q40.append(UInt8(j | ((15 - j) << 4))) }
        // Q4_1: d = 0.25, m = -1 -> x[j] = j / 4 - 1, x[j + 16] = (15 - j) / 4 - 1.
        var q41 = half(0.25) + half(-1)
        for j in 0..<16 { q41.append(UInt8(j | ((15 - j) << 4))) }
        // Q8_0: d = 2, q[j] = j - 16.
        var q80 = half(2)
        for j in 0..<32 { q80.append(UInt8(bitPattern: Int8(j - 16))) }
        func convert(_ type: GGMLType, _ bytes: [UInt8]) throws -> [Float] {
            var out = [Float](repeating: .nan, count: 32)
            try bytes.withUnsafeBytes { s in
                try out.withUnsafeMutableBufferPointer {
                    try GGMLQuant.dequantizeRow(type, s.baseAddress!, $0.baseAddress!, count: 32)
                }
            }
            return out
        }
        XCTAssertEqual(try convert(.q4_0, q40), (0..<16).map { Float($0 - 8) / 2 } + (0..<16).map { Float(7 - $0) / 2 })
        XCTAssertEqual(try convert(.q4_1, q41), (0..<16).map { Float($0) / 4 - 1 } + (0..<16).map { Float(15 - $0) / 4 - 1 })
        XCTAssertEqual(try convert(.q8_0, q80), (0..<32).map { Float(2 * ($0 - 16)) })
        // BF16 is the top half of a float32; F16 through IEEE half.
        let bf: [UInt8] = (0..<32).flatMap { i -> [UInt8] in
            let bits = UInt16((Float(i) * -1.5).bitPattern >> 16)
            return withUnsafeBytes(of: bits.littleEndian) { Array($0) }
        }
        XCTAssertEqual(try convert(.bf16, bf), (0..<32).map { Float($0) * -1.5 })
        XCTAssertEqual(try convert(.f16, (0..<32).flatMap { half(Float($0) / 8) }), (0..<32).map { Float($0) / 8 })
    }
}
