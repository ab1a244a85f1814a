// Pieces shared by the AVX-512 tile kernels (DecodeKernels.c, BFloat16Tile.c); included only by them.
#ifndef KVC_TILE_COMMON_H
#define KVC_TILE_COMMON_H

#include <immintrin.h>
#include <stdint.h>

#define TILE_COMMON __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,f16c,fma"), always_inline)) static inline

/// A little-endian float16 at `p`, widened.
TILE_COMMON float half_at(const uint8_t *p) {
    uint16_t bits = (uint16_t)(p[0] | (p[1] << 8));
    return _cvtsh_ss(bits);
}

/// Lane k of the result = the sequential sum of r[k]'s 8 lanes (an 8x8 transpose, then 7 vertical adds in order, as
/// Swift's SIMD sum() adds them).
TILE_COMMON __m256 lane_sums(const __m256 *r) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    // c_j[k] = r_k[j]
    __m256 c0 = _mm256_permute2f128_ps(u0, u4, 0x20), c1 = _mm256_permute2f128_ps(u1, u5, 0x20);
    __m256 c2 = _mm256_permute2f128_ps(u2, u6, 0x20), c3 = _mm256_permute2f128_ps(u3, u7, 0x20);
    __m256 c4 = _mm256_permute2f128_ps(u0, u4, 0x31), c5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    __m256 c6 = _mm256_permute2f128_ps(u2, u6, 0x31), c7 = _mm256_permute2f128_ps(u3, u7, 0x31);
    __m256 s = _mm256_add_ps(c0, c1);
    s = _mm256_add_ps(s, c2);
    s = _mm256_add_ps(s, c3);
    s = _mm256_add_ps(s, c4);
    s = _mm256_add_ps(s, c5);
    s = _mm256_add_ps(s, c6);
    return _mm256_add_ps(s, c7);
}

#endif
