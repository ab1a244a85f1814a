import Foundation
import KVCCore

/// Conversion of ggml block formats to float32.
///
/// Block layouts (ggml-common.h): Q8_0 = f16 scale d + 32 int8, x = d*q. Q4_0 = f16 d + 16 bytes holding 32 4-bit
/// values, x = d*(q-8). Q4_1 = f16 d + f16 min m + 16 bytes, x = d*q + m. In the 4-bit formats byte j holds
/// element j in its low nibble and element j+16 in its high nibble. Blocks are not 4-byte aligned in the file,
/// so scales are loaded unaligned.
public enum GGMLQuant {
    /// Converts `count` elements (a multiple of the type's block size) starting at `src` to float32.
    /// Throws for types other than F32, F16, BF16, Q8_0, Q4_0, Q4_1, and for a count that splits a block.
    public static func dequantizeRow(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>,
                                     count: Int) throws {
        guard type.canDequantize else { throw KVCError("unsupported tensor type \(type.name)") }
        guard count >= 0, count % type.blockSize == 0 else {
            throw KVCError("dequantize \(type.name): \(count) elements is not a whole number of \(type.blockSize)-element blocks")
        }
        convert(type, src, dst, count: count)
    }

    /// Like `dequantizeRow` for a type known to be supported, split over all cores when the tensor is large.
    static func dequantizeParallel(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>,
                                   count: Int) {
        let blocks = count / type.blockSize
        let workers = ProcessInfo.processInfo.activeProcessorCount
        guard count >= 1 << 20, workers > 1 else { convert(type, src, dst, count: count); return }
        let chunks = workers * 4
        let blocksPerChunk = (blocks + chunks - 1) / chunks
        DispatchQueue.concurrentPerform(iterations: chunks) { k in
            let first = k * blocksPerChunk
            let n = min(blocksPerChunk, blocks - first)
            guard n > 0 else { return }
            convert(type, src + first * type.bytesPerBlock, dst + first * type.blockSize, count: n * type.blockSize)
        }
    }

    private static func convert(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        switch type {
        case .f32: UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
        case .f16: halfToFloat(src, dst, count: count)
        case .bf16: bfloat16ToFloat(src, dst, count: count)
        case .q8_0: q8_0(src, dst, blocks: count / 32)
        case .q4_0: q4(src, dst, blocks: count / 32, hasMin: false)
        case .q4_1: q4(src, dst, blocks: count / 32, hasMin: true)
        default: preconditionFailure("convert called for unsupported type \(type.name)")
        }
    }

    @inline(__always)
    private static func half(_ p: UnsafeRawPointer) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(as: UInt16.self))))
    }

    private static func halfToFloat(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let h = src.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<Float16>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: SIMD8<Float>(h), as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { dst[i] = half(src + 2 * i); i += 1 }
    }

    private static func bfloat16ToFloat(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            dst[i] = Float(bitPattern: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
        }
    }

    private static func q8_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, blocks: Int) {
        for b in 0..<blocks {
            let block = src + b * 34
            let d = half(block)
            let q = block + 2
            let out = dst + b * 32
            for j in 0..<32 { out[j] = d * Float(q.load(fromByteOffset: j, as: Int8.self)) }
        }
    }

    private static func q4(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, blocks: Int, hasMin: Bool) {
        let blockBytes = hasMin ? 20 : 18
        for b in 0..<blocks {
            let block = src + b * blockBytes
            let d = half(block)
            // Q4_0 centres the nibble on 8 ((q - 8) * d, exact in float); Q4_1 stores an explicit minimum instead.
            let bias: Float = hasMin ? 0 : -8
            let m: Float = hasMin ? half(block + 2) : 0
            let q = block + (hasMin ? 4 : 2)
            let out = dst + b * 32
            for j in 0..<16 {
                let byte = q.load(fromByteOffset: j, as: UInt8.self)
                out[j] = (Float(byte & 0x0F) + bias) * d + m
                out[j + 16] = (Float(byte >> 4) + bias) * d + m
            }
        }
    }
}
