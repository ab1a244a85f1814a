// AVX-512 tile kernels of batched decoding (see DecodeKernels.h and BlockMatMat.swift).
//
// Bit-identical to the 256-bit single-vector kernel because each 512-bit register holds two vectors' 8-lane
// partial sums side by side: every lane sees the same multiplies and fused multiply-adds in the same order as the
// single kernel's 8 lanes. The per-block offsets (m·Σx) run lane-per-vector with a separate multiply and add, and
// the final reduction adds each vector's 8 lanes in index order, as Swift's SIMD sum() does. The file is compiled
// with -ffp-contract=off so the compiler fuses nothing on its own.
#include "DecodeKernels.h"

#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__)
#include <immintrin.h>
#include "TileCommon.h"

#define WIDE __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,f16c,fma")))
#define INLINE WIDE __attribute__((always_inline)) static inline
#define PREFETCH_ROWS 2

int kvc_wide_tile_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}

/// One block of a pair of vectors: multiply, then three multiply-adds (the single kernel's order, lane by lane).
INLINE __m512 pair_dot(__m512 q0, __m512 q1, __m512 q2, __m512 q3, const float *xb) {
    __m512 s = _mm512_mul_ps(q0, _mm512_loadu_ps(xb));
    s = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xb + 16), s);
    s = _mm512_fmadd_ps(q2, _mm512_loadu_ps(xb + 32), s);
    return _mm512_fmadd_ps(q3, _mm512_loadu_ps(xb + 48), s);
}

/// `pair_dot` for the first vector of a pair alone (the last vector of an odd count): the same lanes on 256 bits, so a
/// lone vector no longer computes a wasted second half (batch 1: 5.64 -> 4.84 ms per step, `kvc-bench decode --batch 1`).
INLINE __m256 single_dot(__m512 q0, __m512 q1, __m512 q2, __m512 q3, const float *xb) {
    __m256 s = _mm256_mul_ps(_mm512_castps512_ps256(q0), _mm256_loadu_ps(xb));
    s = _mm256_fmadd_ps(_mm512_castps512_ps256(q1), _mm256_loadu_ps(xb + 16), s);
    s = _mm256_fmadd_ps(_mm512_castps512_ps256(q2), _mm256_loadu_ps(xb + 32), s);
    return _mm256_fmadd_ps(_mm512_castps512_ps256(q3), _mm256_loadu_ps(xb + 48), s);
}

/// Stores row r of vectors 8g ..< 8g+8 (those below count): accumulators of pairs 4g ..< 4g+4, plus offsets.
INLINE void finish_group(const __m512 *acc, int g, int pairs, __m256 offsets, int has_offsets, float *y, long y_stride,
                         long r, int count) {
    __m256 r_[8];
    for (int i = 0; i < 4; i++) {
        int p = 4 * g + i;
        __m512 a = p < pairs ? acc[p] : _mm512_setzero_ps();
        r_[2 * i] = _mm512_castps512_ps256(a);
        r_[2 * i + 1] = _mm512_extractf32x8_ps(a, 1);
    }
    __m256 s = lane_sums(r_);
    if (has_offsets) s = _mm256_add_ps(s, offsets);
    float out[8];
    _mm256_storeu_ps(out, s);
    for (int v = 8 * g; v < count && v < 8 * g + 8; v++) y[v * y_stride + r] = out[v - 8 * g];
}

/// The kernel for `pairs` (a literal at each call, so the accumulator array lives in registers) pairs of vectors; with
/// `odd`, the last pair holds one vector and is computed on 256 bits.
INLINE void tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const float *xp,
                 const float *sums, float *y, long y_stride, int count, const int pairs, const int odd) {
    const int full_pairs = pairs - odd;
    const int q8 = format == kvc_format_q8_0, has_min = format == kvc_format_q4_1;
    const long block_bytes = q8 ? 34 : (has_min ? 20 : 18);
    const long pair_stride = blocks * 64;
    const __m128i nibble = _mm_set1_epi8(0x0F);
    for (long r = 0; r < rows; r++) {
        const uint8_t *p = w + r * row_bytes;
        // The weights stream from memory once per step (96 MB, more than the caches hold) and the profile showed the
        // kernel waiting on each block's first load; ask for the row after next while this one is computed.
        if (r + PREFETCH_ROWS < rows) {
            for (long o = 0; o < row_bytes; o += 64) _mm_prefetch((const char *)(p + PREFETCH_ROWS * row_bytes + o), _MM_HINT_T0);
        }
        __m512 acc[8];
        for (int i = 0; i < pairs; i++) acc[i] = _mm512_setzero_ps();
        __m256 last = _mm256_setzero_ps();
        __m256 off0 = _mm256_setzero_ps(), off1 = _mm256_setzero_ps();
        for (long b = 0; b < blocks; b++, p += block_bytes) {
            const float d = half_at(p);
            __m512 q0, q1, q2, q3;
            if (q8) {
                const __m128i lo = _mm_loadu_si128((const __m128i *)(p + 2));
                const __m128i hi = _mm_loadu_si128((const __m128i *)(p + 18));
                q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi64(lo, lo)));
                q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
                q2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi64(hi, hi)));
                q3 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
            } else {
                const float m = has_min ? half_at(p + 2) : -8.0f * d;
                const __m128i packed = _mm_loadu_si128((const __m128i *)(p + (has_min ? 4 : 2)));
                const __m128i low = _mm_and_si128(packed, nibble);
                const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
                q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(low, low)));
                q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi64(low, low)));
                q2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi64(high, high)));
                q3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi64(high, high)));
                const __m256 mv = _mm256_set1_ps(m);
                off0 = _mm256_add_ps(off0, _mm256_mul_ps(mv, _mm256_loadu_ps(sums + b * 16)));
                if (pairs > 4) off1 = _mm256_add_ps(off1, _mm256_mul_ps(mv, _mm256_loadu_ps(sums + b * 16 + 8)));
            }
            const __m512 dv = _mm512_set1_ps(d);
            const float *xb = xp + b * 64;
            for (int i = 0; i < full_pairs; i++) acc[i] = _mm512_fmadd_ps(dv, pair_dot(q0, q1, q2, q3, xb + i * pair_stride), acc[i]);
            if (odd) last = _mm256_fmadd_ps(_mm512_castps512_ps256(dv), single_dot(q0, q1, q2, q3, xb + full_pairs * pair_stride), last);
        }
        if (odd) acc[full_pairs] = _mm512_insertf32x8(_mm512_setzero_ps(), last, 0);
        finish_group(acc, 0, pairs, off0, !q8, y, y_stride, r, count);
        if (pairs > 4) finish_group(acc, 1, pairs, off1, !q8, y, y_stride, r, count);
    }
}

/// One copy per format and pair count, each with both as literals.
INLINE void tile_format(const int format, const uint8_t *w, long rows, long row_bytes, long blocks, const float *xp,
                        const float *sums, float *y, long y_stride, int count) {
    switch (count) {
    case 1: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 1, 1); break;
    case 2: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 1, 0); break;
    case 3: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 2, 1); break;
    case 4: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 2, 0); break;
    case 5: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 3, 1); break;
    case 6: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 3, 0); break;
    case 7: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 4, 1); break;
    case 8: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 4, 0); break;
    case 9: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 5, 1); break;
    case 10: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 5, 0); break;
    case 11: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 6, 1); break;
    case 12: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 6, 0); break;
    case 13: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 7, 1); break;
    case 14: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 7, 0); break;
    case 15: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 8, 1); break;
    default: tile(format, w, rows, row_bytes, blocks, xp, sums, y, y_stride, count, 8, 0); break;
    }
}

WIDE void kvc_wide_tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const float *x_pairs,
                        const float *sums, float *y, long y_stride, int count) {
    switch (format) {
    case kvc_format_q4_1: tile_format(kvc_format_q4_1, w, rows, row_bytes, blocks, x_pairs, sums, y, y_stride, count); break;
    case kvc_format_q4_0: tile_format(kvc_format_q4_0, w, rows, row_bytes, blocks, x_pairs, sums, y, y_stride, count); break;
    default: tile_format(kvc_format_q8_0, w, rows, row_bytes, blocks, x_pairs, sums, y, y_stride, count); break;
    }
}

#else

int kvc_wide_tile_supported(void) { return 0; }

void kvc_wide_tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const float *x_pairs,
                   const float *sums, float *y, long y_stride, int count) {
    (void)format; (void)w; (void)rows; (void)row_bytes; (void)blocks; (void)x_pairs; (void)sums; (void)y; (void)y_stride; (void)count;
}

#endif
