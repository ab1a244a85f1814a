#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// What the single-vector (`BlockMatVec`) and batched (`BlockMatMat`) weight products share: reading a ggml block's
/// scale and widening its 32 quants to float32 in registers. One definition for both keeps a batched row equal to the
/// single-vector product bit for bit by construction, not by two copies that must stay in step.
enum GGMLBlock {
    /// The float16 at `offset` bytes (block scales `d` and minimums `m`).
    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int = 0) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
    }
}

#if arch(x86_64)
/// The 32 quants of one block as four float32 registers, in element order.
struct WidenedBlock {
    var q0, q1, q2, q3: __m256

    /// Q4_1 (`d`, `m`, 16 bytes) and Q4_0 (`d`, 16 bytes): byte j holds element j in its low nibble and element
    /// j + 16 in its high nibble. `nibble` is `_mm_set1_epi8(0x0F)`, hoisted out of the loops.
    @inline(__always)
    static func q4(_ p: UnsafeRawPointer, hasMin: Bool, nibble: __m128i) -> WidenedBlock {
        let packed = (p + (hasMin ? 4 : 2)).loadUnaligned(as: __m128i.self)
        let low = _mm_and_si128(packed, nibble)
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble)
        return WidenedBlock(q0: _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low)),
                            q1: _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(low, low))),
                            q2: _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high)),
                            q3: _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(high, high))))
    }

    /// Q8_0: `d` then 32 signed bytes.
    @inline(__always)
    static func q8_0(_ p: UnsafeRawPointer) -> WidenedBlock {
        let lo = (p + 2).loadUnaligned(as: __m128i.self)
        let hi = (p + 18).loadUnaligned(as: __m128i.self)
        return WidenedBlock(q0: _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
                            q1: _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo))),
                            q2: _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
                            q3: _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi))))
    }

    /// The block's quants times 32 elements of x, eight lanes of partial sums: a multiply, then three multiply-adds
    /// (the order every kernel uses, so their sums agree).
    @inline(__always)
    func dot(_ xb: UnsafePointer<Float>) -> __m256 {
        var s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb))
        s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s)
        s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s)
        return _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s)
    }
}
#endif
