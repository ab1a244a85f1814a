import Foundation
import XCTest
@testable import KVCGGUF
import KVCCore

/// Malformed and hostile files: each must give a KVCError naming the field and offset, never crash or allocate
/// in proportion to a lying count.
final class GGUFHostileInputTests: XCTestCase {
    private func open(_ bytes: [UInt8]) throws -> GGUFFile { try GGUFFile(bytes: bytes, name: "hostile.gguf") }

    /// Magic, version and the two counts.
    private func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) -> GGUFByteBuilder {
        var b = GGUFByteBuilder()
        b.raw(Array("GGUF".utf8))
        b.u32(version)
        b.u64(tensors)
        b.u64(kvs)
        return b
    }

    /// One tensor info after an empty metadata section; `body` writes name..offset.
    private func oneTensor(_ body: (inout GGUFByteBuilder) -> Void, dataBytes: Int = 64) -> [UInt8] {
        var b = header(tensors: 1, kvs: 0)
        body(&b)
        b.pad(to: 32)
        b.raw([UInt8](repeating: 0, count: dataBytes))
        return b.bytes
    }

    private func tensorInfo(_ b: inout GGUFByteBuilder, name: String = "w", dims: [UInt64], type: UInt32 = 0, offset: UInt64 = 0) {
        b.string(name)
        b.u32(UInt32(dims.count))
        for d in dims { b.u64(d) }
        b.u32(type)
        b.u64(offset)
    }

    func testMagicAndVersion() {
        assertKVCError(try open([]), contains: ["hostile.gguf", "truncated", "magic", "offset 0"])
        assertKVCError(try open(Array("GGML".utf8) + [3, 0, 0, 0]), contains: ["not a GGUF file", "\"GGML\"", "offset 0"])
        assertKVCError(try open([0x00, 0xFF, 0x47, 0x47]), contains: ["not a GGUF file", "\\x00\\xFF"])
        assertKVCError(try open(header(version: 1, tensors: 0, kvs: 0).bytes), contains: ["unsupported GGUF version 1", "offset 4"])
        assertKVCError(try open(header(version: 4, tensors: 0, kvs: 0).bytes), contains: ["unsupported GGUF version 4"])
        assertKVCError(try open(header(version: 3 << 24, tensors: 0, kvs: 0).bytes), contains: ["big-endian"])
        assertKVCError(try open(Array("GGUF".utf8) + [3, 0, 0]), contains: ["truncated", "version"])
        // The smallest valid file: no tensors, no metadata.
        XCTAssertNoThrow(try open(header(tensors: 0, kvs: 0).bytes))
        XCTAssertEqual(try open(header(version: 2, tensors: 0, kvs: 0).bytes).version, 2)
    }

    func testHugeCountsAreRejectedBeforeAllocating() {
        assertKVCError(try open(header(tensors: 1 << 60, kvs: 0).bytes),
                       contains: ["tensor count is 1152921504606846976", "offset 8"])
        assertKVCError(try open(header(tensors: UInt64.max, kvs: 0).bytes), contains: ["tensor count"])
        assertKVCError(try open(header(tensors: 0, kvs: 1 << 62).bytes),
                       contains: ["metadata key-value count is 4611686018427387904", "offset 16"])

        var key = header(tensors: 0, kvs: 1)
        key.u64(1 << 62)                       // key length
        key.raw([UInt8](repeating: 0, count: 64))
        assertKVCError(try open(key.bytes), contains: ["length of key of metadata entry 0", "4611686018427387904", "offset 24"])

        var str = header(tensors: 0, kvs: 1)
        str.string("k"); str.u32(8); str.u64(1 << 62)
        assertKVCError(try open(str.bytes), contains: ["metadata key 'k'", "4611686018427387904"])

        for elementType: UInt32 in [0, 8, 9, 10] {
            var arr = header(tensors: 0, kvs: 1)
            arr.string("a"); arr.u32(9); arr.u32(elementType); arr.u64(1 << 40)
            arr.raw([UInt8](repeating: 0, count: 64))
            assertKVCError(try open(arr.bytes), contains: ["element count of metadata key 'a'", "1099511627776", "offset 41"])
        }

        var name = header(tensors: 1, kvs: 0)
        name.u64(UInt64(Int64.max)); name.raw([UInt8](repeating: 0, count: 24))
        assertKVCError(try open(name.bytes), contains: ["length of name of tensor 0"])
    }

    func testMetadataArrayElementBudget() throws {
        let n = GGUFParser.maxMetadataArrayElements + 1
        var arr = header(tensors: 0, kvs: 1)
        arr.string("big"); arr.u32(9); arr.u32(0); arr.u64(UInt64(n))
        arr.raw([UInt8](repeating: 7, count: n))
        assertKVCError(try open(arr.bytes), contains: ["metadata key 'big'", "limit of \(n - 1)"])

        // The budget is per file, not per array.
        var two = header(tensors: 0, kvs: 2)
        for key in ["a", "b"] {
            two.string(key); two.u32(9); two.u32(0); two.u64(UInt64(n / 2 + 1))
            two.raw([UInt8](repeating: 1, count: n / 2 + 1))
        }
        assertKVCError(try open(two.bytes), contains: ["metadata key 'b'", "limit"])
    }

    func testMetadataTypeErrors() {
        var unknown = header(tensors: 0, kvs: 1)
        unknown.string("x"); unknown.u32(13); unknown.u32(0)
        assertKVCError(try open(unknown.bytes), contains: ["metadata key 'x'", "unknown value type 13", "offset 33"])

        var element = header(tensors: 0, kvs: 1)
        element.string("x"); element.u32(9); element.u32(77); element.u64(1); element.u32(0)
        assertKVCError(try open(element.bytes), contains: ["metadata key 'x'", "unknown element type 77"])

        var nested = header(tensors: 0, kvs: 1)
        nested.string("deep"); nested.u32(9)
        for _ in 0..<20 { nested.u32(9); nested.u64(1) }
        nested.u32(0); nested.u64(0)
        assertKVCError(try open(nested.bytes), contains: ["metadata key 'deep'", "nested more than"])

        var longKey = header(tensors: 0, kvs: 1)
        longKey.keyValue(String(repeating: "k", count: 65_536), .uint8(0))
        let keyMessage = assertKVCError(try open(longKey.bytes), contains: ["key of metadata entry 0", "65536 bytes long", "offset 24"])
        XCTAssertLessThan(keyMessage?.count ?? 0, 200)

        var dup = header(tensors: 0, kvs: 2)
        dup.keyValue("k", .uint32(1)); dup.keyValue("k", .uint32(2))
        assertKVCError(try open(dup.bytes), contains: ["duplicate metadata key 'k'", "offset 41"])

        for (value, fragment) in [(GGUFValue.uint32(3), "power of two"), (.uint32(0), "power of two"),
                                  (.uint64(32), "must be uint32, found uint64"), (.string("32"), "found string")] {
            var align = header(tensors: 0, kvs: 1)
            align.keyValue("general.alignment", value)
            assertKVCError(try open(align.bytes), contains: ["general.alignment", fragment])
        }
    }

    func testTensorInfoErrors() {
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [1 << 32, 1 << 32]) }),
                       contains: ["tensor 'w'", "element count overflows", "offset 45"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [1 << 62, 1 << 62, 1 << 62]) }), contains: ["overflows"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [UInt64(bitPattern: -4)]) }),
                       contains: ["dimension 0 of tensor 'w'", "negative", "-4"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [1, 1, 1, 1, 1]) }), contains: ["5 dimensions", "at most 4"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [32], type: 99) }),
                       contains: ["tensor 'w'", "unknown tensor type 99"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [32], type: 4) }), contains: ["unknown tensor type 4"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [31, 2], type: GGMLType.q4_1.rawValue) }),
                       contains: ["row length 31", "Q4_1 block size 32"])
        // Element count fine, byte count overflows: 2^62 elements of F64.
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [1 << 62], type: GGMLType.f64.rawValue) }),
                       contains: ["byte size overflows"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [4], offset: 3) }),
                       contains: ["data offset 3", "not a multiple of the alignment 32"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [4], offset: 1 << 63) }), contains: ["past any possible end"])
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [4], offset: 1 << 40) }),
                       contains: ["tensor 'w'", "needs bytes", "file has"])
        // Offset and byte count each fit in Int but their sum does not.
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [3 << 61], type: GGMLType.i8.rawValue, offset: (1 << 62) - 32) }),
                       contains: ["needs bytes", "..<115292150460684697", "file has"])
        // 17 floats = 68 bytes, but only 64 bytes of data follow.
        assertKVCError(try open(oneTensor { tensorInfo(&$0, dims: [17]) }), contains: ["tensor 'w'", "file has"])
        XCTAssertNoThrow(try open(oneTensor { tensorInfo(&$0, dims: [16]) }))

        let longName = String(repeating: "n", count: 64)
        assertKVCError(try open(oneTensor { tensorInfo(&$0, name: longName, dims: [4]) }),
                       contains: ["name of tensor 0", "64 bytes long", "at most 63", "offset 24"])
        XCTAssertNoThrow(try open(oneTensor { tensorInfo(&$0, name: String(longName.dropLast()), dims: [4]) }))
        // Names in messages have control characters replaced.
        let message = assertKVCError(try open(oneTensor { tensorInfo(&$0, name: "a\nb\u{1B}[31m", dims: [4], type: 99) }),
                                     contains: ["'a?b?[31m'"])
        XCTAssertFalse(message?.contains("\n") ?? true)

        var overlap = header(tensors: 2, kvs: 0)
        tensorInfo(&overlap, name: "a", dims: [16]); tensorInfo(&overlap, name: "b", dims: [4], offset: 32)
        overlap.pad(to: 32); overlap.raw([UInt8](repeating: 0, count: 128))
        assertKVCError(try open(overlap.bytes), contains: ["tensor 'b'", "overlaps tensor 'a'", "offset 57"])

        var dup = header(tensors: 2, kvs: 0)
        tensorInfo(&dup, dims: [4]); tensorInfo(&dup, dims: [4], offset: 32)
        dup.pad(to: 32); dup.raw([UInt8](repeating: 0, count: 64))
        assertKVCError(try open(dup.bytes), contains: ["duplicate tensor name 'w'", "offset 57"])
    }

    func testUnsupportedTensorTypeParsesButRefusesToDequantize() throws {
        var w = GGUFWriter()
        w.addTensor("blk.0.q", type: .q4_K, dims: [256, 2], data: [UInt8](repeating: 0, count: 2 * 144))
        let f = try open(w.serialize())
        XCTAssertEqual(try f.tensor("blk.0.q").byteCount, 288)
        assertKVCError(try f.dequantize("blk.0.q"), contains: ["unsupported tensor type Q4_K in tensor 'blk.0.q'"])
    }

    func testTruncationAtEveryByte() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("n", .uint32(7))
        w.set("tokens", .array([.string("a"), .string("bc")]))
        w.set("scores", .array([.float32(1), .float32(2)]))
        w.addTensor("a", dims: [8], floats: (0..<8).map(Float.init))
        w.addTensor("b", type: .q8_0, dims: [32, 2], data: [UInt8](repeating: 1, count: 68))
        let full = w.serialize()
        let f = try open(full)
        let needed = f.tensors.map { $0.offset + $0.byteCount }.max()!
        var failures = 0
        for length in 0..<full.count {
            do {
                _ = try open(Array(full[0..<length]))
                XCTAssertGreaterThanOrEqual(length, needed, "prefix of \(length) bytes parsed but tensors need \(needed)")
            } catch let e as KVCError {
                failures += 1
                XCTAssertTrue(e.message.contains("hostile.gguf") && e.message.contains("offset"), e.message)
            }
        }
        XCTAssertEqual(failures, needed)
    }

    func testFileSystemErrors() throws {
        assertKVCError(try GGUFFile(path: "/nonexistent/model.gguf"), contains: ["/nonexistent/model.gguf", "cannot open"])
        assertKVCError(try GGUFFile(path: NSTemporaryDirectory()), contains: ["not a regular file"])
        let empty = NSTemporaryDirectory() + "kvc-gguf-empty-\(getpid()).gguf"
        XCTAssertTrue(FileManager.default.createFile(atPath: empty, contents: Data()))
        defer { try? FileManager.default.removeItem(atPath: empty) }
        assertKVCError(try GGUFFile(path: empty), contains: [empty, "truncated", "magic"])
    }
}
