import Foundation
import XCTest
@testable import KVCGGUF
import KVCCore

/// The real SmolLM2 file against values the `gguf` Python package produced (Fixtures/smollm2_reference.json).
final class GGUFRealFileTests: XCTestCase {
    private static var cached: GGUFFile?
    private func model() throws -> GGUFFile {
        if let f = Self.cached { return f }
        let f = try GGUFFile(path: TestPaths.realModel())
        Self.cached = f
        return f
    }
    private func reference() throws -> [String: Any] { try TestPaths.json("smollm2_reference.json") }

    func testHeaderAndMetadataMatchReference() throws {
        let f = try model()
        let ref = try reference()
        XCTAssertEqual(f.fileSize, ref["file_size"] as? Int)
        XCTAssertEqual(Int(f.version), ref["version"] as? Int)
        XCTAssertEqual(f.tensors.count, ref["tensor_count"] as? Int)
        XCTAssertEqual(f.metadataKeys, ref["metadata_keys"] as? [String])
        XCTAssertEqual(f.alignment, 32)
        XCTAssertEqual(f.dataOffset, ref["data_offset"] as? Int)

        XCTAssertEqual(try f.string("general.architecture"), "llama")
        XCTAssertEqual(try f.int("llama.block_count"), 30)
        XCTAssertEqual(try f.int("llama.embedding_length"), 576)
        XCTAssertEqual(try f.int("llama.feed_forward_length"), 1536)
        XCTAssertEqual(try f.int("llama.attention.head_count"), 9)
        XCTAssertEqual(try f.int("llama.attention.head_count_kv"), 3)
        XCTAssertEqual(try f.int("llama.rope.dimension_count"), 64)
        XCTAssertEqual(try f.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(try f.string("tokenizer.ggml.pre"), "smollm")
        XCTAssertEqual(try f.bool("tokenizer.ggml.add_bos_token"), false)

        let meta = try XCTUnwrap(ref["metadata"] as? [String: Any])
        for (key, expected) in meta {
            switch expected {
            case let s as String: XCTAssertEqual(try f.string(key), s, key)
            case let b as Bool where f.metadata[key]?.boolValue != nil: XCTAssertEqual(try f.bool(key), b, key)
            case let n as NSNumber:
                if case .float32 = f.metadata[key] {
                    XCTAssertEqual(try f.float(key), n.floatValue, key)
                } else {
                    XCTAssertEqual(try f.int(key), n.intValue, key)
                }
            default: XCTFail("unexpected reference value for \(key)")
            }
        }
        XCTAssertEqual(try f.float("llama.rope.freq_base"), 100_000)

        let tokens = try f.stringArray("tokenizer.ggml.tokens")
        XCTAssertEqual(tokens.count, ref["tokens_count"] as? Int)
        for (i, s) in try XCTUnwrap(ref["tokens_sample"] as? [String: String]) { XCTAssertEqual(tokens[Int(i)!], s) }
        let merges = try f.stringArray("tokenizer.ggml.merges")
        XCTAssertEqual(merges.count, ref["merges_count"] as? Int)
        for (i, s) in try XCTUnwrap(ref["merges_sample"] as? [String: String]) { XCTAssertEqual(merges[Int(i)!], s) }
        let types = try f.intArray("tokenizer.ggml.token_type")
        for (i, t) in try XCTUnwrap(ref["token_type_sample"] as? [String: Int]) { XCTAssertEqual(types[Int(i)!], t) }
        XCTAssertEqual(try f.string("tokenizer.chat_template").utf8.count, ref["chat_template_length"] as? Int)
    }

    func testTensorDirectoryMatchesReference() throws {
        let f = try model()
        let ref = try reference()
        var counts: [String: Int] = [:]
        for t in f.tensors { counts[t.type.name, default: 0] += 1 }
        XCTAssertEqual(counts, ref["tensor_type_counts"] as? [String: Int])
        XCTAssertEqual(f.tensors.prefix(12).map(\.name), ref["first_tensor_names"] as? [String])
        for case let r as [String: Any] in try XCTUnwrap(ref["tensors"] as? [Any]) {
            let name = try XCTUnwrap(r["name"] as? String)
            let t = try f.tensor(name)
            XCTAssertEqual(t.type.name, r["type"] as? String, name)
            XCTAssertEqual(Int(t.type.rawValue), r["type_id"] as? Int, name)
            XCTAssertEqual(t.dims, r["dims"] as? [Int], name)
            XCTAssertEqual(t.offset, r["offset"] as? Int, name)
            XCTAssertEqual(t.byteCount, r["byte_count"] as? Int, name)
            XCTAssertEqual(t.elementCount, r["element_count"] as? Int, name)
            XCTAssertEqual(f.rawBytes(t).count, t.byteCount)
        }
        // Layout the decoder relies on: Q4_1 matrices, a Q8_0 embedding, F32 norms.
        XCTAssertEqual(try f.tensor("token_embd.weight").type, .q8_0)
        XCTAssertEqual(try f.tensor("token_embd.weight").dims, [576, 49152])
        XCTAssertEqual(try f.tensor("blk.3.attn_k.weight").type, .q4_1)
        XCTAssertEqual(try f.tensor("blk.3.attn_k.weight").dims, [576, 192])
        XCTAssertEqual(try f.tensor("output_norm.weight").type, .f32)
        XCTAssertFalse(f.hasTensor("output.weight"), "SmolLM2 ties the output projection to the embedding")
    }

    func testDequantizedValuesMatchReference() throws {
        let f = try model()
        let ref = try reference()
        var seenTypes = Set<String>()
        for case let r as [String: Any] in try XCTUnwrap(ref["tensors"] as? [Any]) {
            let name = try XCTUnwrap(r["name"] as? String)
            let values = try f.dequantize(name)
            let indices = try XCTUnwrap(r["indices"] as? [Int])
            let expected = try XCTUnwrap(r["values"] as? [Double])
            XCTAssertEqual(values.count, r["element_count"] as? Int)
            for (i, e) in zip(indices, expected) {
                // Same arithmetic as numpy except possibly a fused multiply-add: allow one rounding step.
                XCTAssertEqual(Double(values[i]), e, accuracy: abs(e) * 1e-6 + 1e-7, "\(name)[\(i)]")
            }
            let sum = values.reduce(0.0) { $0 + Double($1) }
            let absSum = values.reduce(0.0) { $0 + Double(abs($1)) }
            let refSum = try XCTUnwrap(r["sum"] as? Double), refAbs = try XCTUnwrap(r["abs_sum"] as? Double)
            XCTAssertEqual(sum, refSum, accuracy: refAbs * 1e-6, "\(name) sum")
            XCTAssertEqual(absSum, refAbs, accuracy: refAbs * 1e-6, "\(name) abs sum")
            seenTypes.insert(try XCTUnwrap(r["type"] as? String))
        }
        XCTAssertEqual(seenTypes, ["F32", "Q4_1", "Q8_0"])
    }

    func testRowDequantizationMatchesWholeTensor() throws {
        let f = try model()
        for name in ["blk.0.attn_q.weight", "token_embd.weight", "output_norm.weight"] {
            let t = try f.tensor(name)
            let whole = try f.dequantize(t)
            let raw = f.rawBytes(t)
            var row = [Float](repeating: .nan, count: t.rowLength)
            for r in [0, t.rowCount / 2, t.rowCount - 1] {
                try row.withUnsafeMutableBufferPointer {
                    try GGMLQuant.dequantizeRow(t.type, raw.baseAddress! + r * t.rowByteCount, $0.baseAddress!, count: t.rowLength)
                }
                XCTAssertEqual(row, Array(whole[(r * t.rowLength)..<((r + 1) * t.rowLength)]), "\(name) row \(r)")
            }
            let range = (t.rowCount / 3)..<(t.rowCount / 3 + min(2, t.rowCount))
            var rowsOut = [Float](repeating: .nan, count: range.count * t.rowLength)
            try rowsOut.withUnsafeMutableBufferPointer { try f.dequantize(t, rows: range, into: $0) }
            XCTAssertEqual(rowsOut, Array(whole[(range.lowerBound * t.rowLength)..<(range.upperBound * t.rowLength)]), name)
        }
    }

    func testTypedAccessorErrorsNameKeyAndTypes() throws {
        let f = try model()
        assertKVCError(try f.string("llama.block_count"), contains: ["llama.block_count", "expected string", "uint32"])
        assertKVCError(try f.int("general.architecture"), contains: ["general.architecture", "integer", "string"])
        assertKVCError(try f.float("tokenizer.ggml.tokens"), contains: ["tokenizer.ggml.tokens", "float", "array of string"])
        assertKVCError(try f.intArray("tokenizer.ggml.merges"), contains: ["tokenizer.ggml.merges", "element 0", "string"])
        assertKVCError(try f.stringArray("llama.vocab_size"), contains: ["llama.vocab_size", "array of string", "uint32"])
        assertKVCError(try f.int("llama.no_such_key"), contains: ["llama.no_such_key", "missing", f.path])
        XCTAssertEqual(try f.int("llama.no_such_key", default: 7), 7)
        XCTAssertEqual(try f.int("llama.block_count", default: 7), 30)
        XCTAssertEqual(try f.float("llama.rope.freq_base", default: 10_000), 100_000)
        XCTAssertEqual(try f.string("tokenizer.ggml.pre", default: "default"), "smollm")
        XCTAssertEqual(try f.bool("tokenizer.ggml.add_eos_token", default: true), true)
        assertKVCError(try f.string("llama.block_count", default: "x"), contains: ["llama.block_count", "expected string", "uint32"])
        assertKVCError(try f.tensor("blk.30.attn_q.weight"), contains: ["blk.30.attn_q.weight", f.path])
    }

    /// Not a timed assertion: prints the load figures and checks the whole model converts to finite floats.
    func testWholeModelLoadsToFiniteFloats() throws {
        let path = try TestPaths.realModel()
        let start = Date()
        let f = try GGUFFile(path: path)
        let parsed = Date()
        var elements = 0, nonFinite = 0
        for t in f.tensors {
            let v = try f.dequantize(t)
            elements += v.count
            nonFinite += v.reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
        }
        let done = Date()
        XCTAssertEqual(nonFinite, 0)
        XCTAssertEqual(elements, f.tensors.reduce(0) { $0 + $1.elementCount })
        print(String(format: "GGUF load: parse %.1f ms (%d tensors, %d metadata keys); dequantize %d elements in %.0f ms (%.0f M elements/s)",
                     parsed.timeIntervalSince(start) * 1000, f.tensors.count, f.metadata.count, elements,
                     done.timeIntervalSince(parsed) * 1000, Double(elements) / done.timeIntervalSince(parsed) / 1e6))
    }
}
