/// Bulk conversions between float32 and the 16-bit storage formats (IEEE half and bfloat16).
/// With `-target-cpu haswell` the half conversions compile to F16C instructions.
public enum HalfConversion {
    public static func halfToFloat(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        src.withMemoryRebound(to: Float16.self, capacity: count) { h in
            var i = 0
            while i + 8 <= count {
                let v = UnsafeRawPointer(h + i).loadUnaligned(as: SIMD8<Float16>.self)
                UnsafeMutableRawPointer(dst + i).storeBytes(of: SIMD8<Float>(v), as: SIMD8<Float>.self)
                i += 8
            }
            while i < count { dst[i] = Float(h[i]); i += 1 }
        }
    }

    public static func floatToHalf(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count: Int) {
        dst.withMemoryRebound(to: Float16.self, capacity: count) { h in
            var i = 0
            while i + 8 <= count {
                let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(h + i).storeBytes(of: SIMD8<Float16>(v), as: SIMD8<Float16>.self)
                i += 8
            }
            while i < count { h[i] = Float16(src[i]); i += 1 }
        }
    }

    public static func bfloat16ToFloat(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src[i]) << 16) }
    }

    /// Round-to-nearest-even, NaN kept quiet (as PyTorch does).
    public static func floatToBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count: Int) {
        for i in 0..<count { dst[i] = bfloat16Bits(src[i]) }
    }

    @inline(__always)
    public static func bfloat16Bits(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(bits >> 16) | 0x0040 }
        let rounding = ((bits >> 16) & 1) &+ 0x7FFF
        return UInt16((bits &+ rounding) >> 16)
    }

    public static func halfToFloat(_ src: [UInt16]) -> [Float] {
        if src.isEmpty { return [] }
        return [Float](unsafeUninitializedCapacity: src.count) { buf, n in
            src.withUnsafeBufferPointer { halfToFloat($0.baseAddress!, buf.baseAddress!, count: src.count) }
            n = src.count
        }
    }

    public static func floatToHalf(_ src: [Float]) -> [UInt16] {
        if src.isEmpty { return [] }
        return [UInt16](unsafeUninitializedCapacity: src.count) { buf, n in
            src.withUnsafeBufferPointer { floatToHalf($0.baseAddress!, buf.baseAddress!, count: src.count) }
            n = src.count
        }
    }
}
