import Foundation
import XCTest
@testable import KVCGGUF
import KVCCore

/// Seeded mutation fuzzing (issue 9): flip, overwrite, truncate, extend, splice the bytes of real and synthetic
/// GGUF files and open every mutant. Errors are expected; a crash, a hang or an out-of-bounds tensor is a failure.
/// `KVC_FUZZ_ITERATIONS` sets the mutant count (default 3000: 45% per synthetic seed, 10% on the real model's header).
final class GGUFMutationFuzzTests: XCTestCase {
    private struct Tally { var parsed = 0, rejected = 0, dequantized = 0 }

    /// Values that tend to sit on boundaries of counts, lengths, offsets and type tags.
    private static let interestingWords: [UInt64] = [
        0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 30, 31, 32, 33, 39, 40, 64, 255, 256, 0x7FFF, 0xFFFF, 0x1_0000,
        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 1 << 40, 1 << 60, 1 << 62,
        0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, UInt64.max, UInt64.max - 1,
        (1 << 62) - 32, 3 << 61, 0x7FFF_FFFF_FFFF_FFE0, (1 << 31) + (1 << 30),
    ]

    /// Mutates `bytes` in place; every mutation kind keeps the array valid Swift-wise (the file may be anything).
    private static func mutate(_ bytes: inout [UInt8], _ rng: inout SeededRandom, hotRegion: Int) {
        func position() -> Int {
            guard !bytes.isEmpty else { return 0 }
            // Half the mutations hit the header and first entries, where the structure is densest.
            let limit = rng.nextInt(below: 2) == 0 ? min(hotRegion, bytes.count) : bytes.count
            return rng.nextInt(below: max(limit, 1))
        }
        switch rng.nextInt(below: 8) {
        case 0, 1:
            for _ in 0...rng.nextInt(below: 4) where !bytes.isEmpty { bytes[position()] ^= UInt8(1 << rng.nextInt(below: 8)) }
        case 2:
            if !bytes.isEmpty { bytes[position()] = UInt8(truncatingIfNeeded: interestingWords[rng.nextInt(below: interestingWords.count)]) }
        case 3:
            let width = rng.nextInt(below: 2) == 0 ? 4 : 8
            let at = position()
            guard at + width <= bytes.count else { return }
            let w = interestingWords[rng.nextInt(below: interestingWords.count)]
            for k in 0..<width { bytes[at + k] = UInt8(truncatingIfNeeded: w >> (8 * k)) }
        case 4:
            bytes.removeLast(rng.nextInt(below: bytes.count + 1))
        case 5:
            bytes += (0..<rng.nextInt(below: 256)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        case 6:
            let at = position(), n = min(rng.nextInt(below: 16) + 1, bytes.count - at)
            if n > 0 { bytes.removeSubrange(at..<(at + n)) }
        default:
            let at = position()
            let chunk = (0..<(rng.nextInt(below: 16) + 1)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            bytes.insert(contentsOf: chunk, at: min(at, bytes.count))
        }
    }

    /// Uses a parsed mutant the way a loader would, and checks the invariants the parser promises.
    private static func exercise(_ f: GGUFFile, _ tally: inout Tally, maxDequantizeElements: Int) {
        tally.parsed += 1
        for key in f.metadataKeys {
            _ = try? f.string(key); _ = try? f.int(key); _ = try? f.float(key)
            _ = try? f.stringArray(key); _ = try? f.intArray(key); _ = try? f.floatArray(key)
        }
        for t in f.tensors {
            XCTAssertTrue(t.offset >= f.dataOffset && t.offset + t.byteCount <= f.fileSize, "tensor \(t.name) out of bounds")
            XCTAssertEqual(t.byteCount, t.elementCount / t.type.blockSize * t.type.bytesPerBlock)
            let raw = f.rawBytes(t)
            if raw.count > 0 { _ = raw[0] &+ raw[raw.count - 1] }
            if t.elementCount <= maxDequantizeElements, let v = try? f.dequantize(t) {
                XCTAssertEqual(v.count, t.elementCount)
                tally.dequantized += 1
            }
        }
    }

    private static func richWriterSeed() -> [UInt8] {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("u8", .uint8(1)); w.set("i8", .int8(-1)); w.set("u16", .uint16(2)); w.set("i16", .int16(-2))
        w.set("u32", .uint32(3)); w.set("i32", .int32(-3)); w.set("u64", .uint64(4)); w.set("i64", .int64(-4))
        w.set("f32", .float32(0.5)); w.set("f64", .float64(0.25)); w.set("b", .bool(true)); w.set("s", .string("ab"))
        w.set("tokens", .array(["<s>", "a", "Ġb", "世"].map { GGUFValue.string($0) }))
        w.set("types", .array([1, 1, 2, 3].map { GGUFValue.int32($0) }))
        w.set("nested", .array([.array([.uint8(1)]), .array([.uint8(2), .uint8(3)])]))
        for type in [GGMLType.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q6_K] {
            let cols = type.blockSize == 1 ? 8 : type.blockSize
            let bytes = (0..<(2 * cols / type.blockSize * type.bytesPerBlock)).map { UInt8(truncatingIfNeeded: $0 &* 37) }
            w.addTensor("t.\(type.name)", type: type, dims: [cols, 2], data: bytes)
        }
        return w.serialize()
    }

    /// Deterministic sweep: every interesting 4- and 8-byte value at every byte position of a small file's header,
    /// metadata and tensor infos (where a single lying field does the most damage).
    func testEveryInterestingWordAtEveryHeaderPosition() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("n", .uint32(7))
        w.set("tokens", .array([.string("a"), .string("bc")]))
        w.set("nested", .array([.array([.int16(1)])]))
        w.addTensor("a", dims: [8, 2], floats: (0..<16).map(Float.init))
        w.addTensor("q", type: .q4_1, dims: [32, 2], data: [UInt8](repeating: 0x35, count: 40))
        w.addTensor("b", type: .i8, dims: [4], data: [1, 2, 3, 4])
        let seed = w.serialize()
        let headerEnd = try GGUFFile(bytes: seed).dataOffset
        var tally = Tally()
        for position in 0..<headerEnd {
            for width in [4, 8] where position + width <= seed.count {
                for word in Self.interestingWords {
                    var bytes = seed
                    for k in 0..<width { bytes[position + k] = UInt8(truncatingIfNeeded: word >> (8 * k)) }
                    do {
                        Self.exercise(try GGUFFile(bytes: bytes, name: "sweep"), &tally, maxDequantizeElements: 1 << 20)
                    } catch is KVCError {
                        tally.rejected += 1
                    }
                }
            }
        }
        print("gguf field sweep: \(tally.parsed + tally.rejected) variants of a \(seed.count)-byte file, \(tally.parsed) parsed, "
              + "\(tally.rejected) rejected with an error, 0 crashes")
        XCTAssertGreaterThan(tally.rejected, 0)
    }

    func testMutantsNeverCrash() throws {
        let iterations = Int(ProcessInfo.processInfo.environment["KVC_FUZZ_ITERATIONS"] ?? "") ?? 3000
        var rng = SeededRandom(seed: 0x6767_7566)
        let python = try [UInt8](Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("synthetic_types.gguf"))))
        let seeds = [("gguf-py synthetic", python), ("writer synthetic", Self.richWriterSeed())]
        for (_, seed) in seeds { XCTAssertNoThrow(try GGUFFile(bytes: seed), "seeds must be valid") }

        var tally = Tally()
        let realShare = iterations / 10
        let start = Date()
        for i in 0..<(iterations - realShare) {
            var bytes = seeds[i % seeds.count].1
            for _ in 0...rng.nextInt(below: 3) { Self.mutate(&bytes, &rng, hotRegion: 512) }
            do {
                let f = try GGUFFile(bytes: bytes, name: "mutant-\(i)")
                Self.exercise(f, &tally, maxDequantizeElements: 1 << 20)
            } catch is KVCError {
                tally.rejected += 1
            }
        }
        let realCount = try fuzzRealHeader(iterations: realShare, rng: &rng, tally: &tally)
        let rss = Self.peakResidentMB()
        print("gguf mutation fuzz: \(iterations - realShare + realCount) mutants (\(iterations - realShare) synthetic, "
              + "\(realCount) of the real model), \(tally.parsed) parsed, \(tally.rejected) rejected with an error, "
              + "\(tally.dequantized) tensors dequantized from parsed mutants, 0 crashes, "
              + String(format: "%.1f s, peak RSS %d MB", Date().timeIntervalSince(start), rss))
        XCTAssertEqual(tally.parsed + tally.rejected, iterations - realShare + realCount)
        XCTAssertGreaterThan(tally.rejected, 0)
        XCTAssertGreaterThan(tally.parsed, 0)
    }

    /// Mutates a private copy of the real 98 MB file in place and undoes each mutation, so no mutant costs a copy.
    /// Mutations land in the header (metadata and tensor infos); the file is truncated or extended by lying about
    /// the buffer length.
    private func fuzzRealHeader(iterations: Int, rng: inout SeededRandom, tally: inout Tally) throws -> Int {
        guard iterations > 0 else { return 0 }
        let path = try TestPaths.realModel()
        let original = try GGUFFile(path: path)
        let size = original.fileSize, header = original.dataOffset
        let spare = 4096
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size + spare, alignment: 64)
        defer { buffer.deallocate() }
        do {   // scoped so the read copy is freed before fuzzing
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            XCTAssertEqual(data.count, size)
            data.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: size) }
        }
        for k in size..<(size + spare) { buffer[k] = UInt8(truncatingIfNeeded: rng.next()) }

        for i in 0..<iterations {
            var undo: [(Int, UInt8)] = []
            func write(_ at: Int, _ v: UInt8) { undo.append((at, buffer[at])); buffer[at] = v }
            var length = size
            for _ in 0...rng.nextInt(below: 3) {
                // Half in the first 4 KiB (header, early keys), a quarter in the tensor infos, a quarter anywhere.
                let region = rng.nextInt(below: 4)
                let at = region < 2 ? rng.nextInt(below: 4096)
                    : region == 2 ? header - 1 - rng.nextInt(below: min(header, 20_000)) : rng.nextInt(below: header)
                switch rng.nextInt(below: 4) {
                case 0: write(at, buffer[at] ^ UInt8(1 << rng.nextInt(below: 8)))
                case 1:
                    let w = Self.interestingWords[rng.nextInt(below: Self.interestingWords.count)]
                    for k in 0..<8 { write(at + k, UInt8(truncatingIfNeeded: w >> (8 * k))) }
                case 2: length = rng.nextInt(below: size)
                default: length = size + rng.nextInt(below: spare + 1)
                }
            }
            do {
                let f = try GGUFFile(borrowing: UnsafeRawBufferPointer(start: buffer.baseAddress, count: length),
                                     name: "real-mutant-\(i)")
                Self.exercise(f, &tally, maxDequantizeElements: 1 << 16)
            } catch is KVCError {
                tally.rejected += 1
            }
            for (at, v) in undo.reversed() { buffer[at] = v }
        }
        return iterations
    }

    private static func peakResidentMB() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return -1 }
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1024) / 1024
    }
}
