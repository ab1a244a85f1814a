// The bfloat16 tile kernel of batched decoding (see DecodeKernels.h and BFloat16Tile.swift).
//
// Each 32-weight block is dequantized once to float32 (d·q + m), rounded to bfloat16 and multiplied with every
// vector's bfloat16 block by one `vdpbf16ps` (32 products, 16 float32 lanes): one instruction per vector and block,
// where the float32 kernel needs four multiply-adds per pair of vectors plus the scale. The per-vector work of a
// step is what an extra sequence in a batch costs, so this is the kernel that makes batching pay on a CPU.
// Every vector is summed in the same order whatever else shares the tile, so a sequence decodes the same tokens in
// a batch as alone (at this precision).
#include "DecodeKernels.h"

#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__)
#include <immintrin.h>
#include "TileCommon.h"

#define BF16 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,f16c,fma")))
#define INLINE BF16 __attribute__((always_inline)) static inline
#define PREFETCH_ROWS 2

int kvc_bf16_tile_supported(void) {
    __builtin_cpu_init();
    return kvc_wide_tile_supported() && __builtin_cpu_supports("avx512bf16");
}

/// One block's 32 weights as bfloat16, in element order (a Q4 byte holds element k low and k + 16 high).
INLINE __m512bh block_weights(const int format, const uint8_t *p) {
    const float d = half_at(p);
    __m512 w0, w1;
    if (format == kvc_format_q8_0) {
        const __m512 dv = _mm512_set1_ps(d);
        w0 = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)))));
        w1 = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)))));
    } else {
        const int has_min = format == kvc_format_q4_1;
        const __m512 dv = _mm512_set1_ps(d), mv = _mm512_set1_ps(has_min ? half_at(p + 2) : -8.0f * d);
        const __m128i nibble = _mm_set1_epi8(0x0F);
        const __m128i packed = _mm_loadu_si128((const __m128i *)(p + (has_min ? 4 : 2)));
        const __m128i low = _mm_and_si128(packed, nibble), high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
        w0 = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)), mv);
        w1 = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), mv);
    }
    return _mm512_cvtne2ps_pbh(w1, w0);
}

/// Rows of `count` (a literal at each call, so the accumulators live in registers) vectors. Small counts interleave
/// `R` rows so that several `vdpbf16ps` chains are in flight (one chain alone waits on the instruction's latency:
/// batch 1 took 21 ms per step against float32's 9.4); each row is still summed block by block, whatever R is.
/// Each row's 16-lane sums are folded to 8 lanes and kept; every 8 rows one transpose turns them into 8 consecutive
/// outputs per vector.
INLINE void tile(const int format, const uint8_t *w, long rows, long row_bytes, long blocks, const uint16_t *x,
                 long x_stride, float *y, long y_stride, const int count) {
    const long block_bytes = format == kvc_format_q8_0 ? 34 : (format == kvc_format_q4_1 ? 20 : 18);
    const int R = count == 1 ? 8 : (count == 2 ? 4 : (count <= 4 ? 2 : 1));
    __m256 folded[16][8];
    for (long r0 = 0; r0 < rows; r0 += 8) {
        const int n = rows - r0 < 8 ? (int)(rows - r0) : 8;
        for (int i = 0; i < n; i += R) {
            const uint8_t *p[8];
            for (int k = 0; k < R; k++) {
                // Rows past the end repeat the last one (computed, never stored).
                const long r = r0 + (i + k < n ? i + k : n - 1);
                p[k] = w + r * row_bytes;
                // The weights stream from memory once per step; ask for the rows after next while these are computed.
                if (r + PREFETCH_ROWS * R < rows) {
                    for (long o = 0; o < row_bytes; o += 64) {
                        _mm_prefetch((const char *)(p[k] + PREFETCH_ROWS * R * row_bytes + o), _MM_HINT_T0);
                    }
                }
            }
            __m512 acc[8][16];
            for (int k = 0; k < R; k++) {
                for (int v = 0; v < count; v++) acc[k][v] = _mm512_setzero_ps();
            }
            for (long b = 0; b < blocks; b++) {
                for (int k = 0; k < R; k++) {
                    const __m512bh wb = block_weights(format, p[k] + b * block_bytes);
                    for (int v = 0; v < count; v++) {
                        const __m512bh xb = (__m512bh)_mm512_loadu_si512((const void *)(x + v * x_stride + b * 32));
                        acc[k][v] = _mm512_dpbf16_ps(acc[k][v], wb, xb);
                    }
                }
            }
            for (int k = 0; k < R && i + k < n; k++) {
                for (int v = 0; v < count; v++) {
                    folded[v][i + k] = _mm256_add_ps(_mm512_castps512_ps256(acc[k][v]), _mm512_extractf32x8_ps(acc[k][v], 1));
                }
            }
        }
        for (int i = n; i < 8; i++) {
            for (int v = 0; v < count; v++) folded[v][i] = _mm256_setzero_ps();
        }
        const __mmask8 keep = (__mmask8)((1u << n) - 1);
        for (int v = 0; v < count; v++) _mm256_mask_storeu_ps(y + v * y_stride + r0, keep, lane_sums(folded[v]));
    }
}

INLINE void tile_format(const int format, const uint8_t *w, long rows, long row_bytes, long blocks, const uint16_t *x,
                        long x_stride, float *y, long y_stride, int count) {
    switch (count) {
#define CASE(n) case n: tile(format, w, rows, row_bytes, blocks, x, x_stride, y, y_stride, n); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15)
#undef CASE
    default: tile(format, w, rows, row_bytes, blocks, x, x_stride, y, y_stride, 16); break;
    }
}

BF16 void kvc_bf16_tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const uint16_t *x,
                        long x_stride, float *y, long y_stride, int count) {
    switch (format) {
    case kvc_format_q4_1: tile_format(kvc_format_q4_1, w, rows, row_bytes, blocks, x, x_stride, y, y_stride, count); break;
    case kvc_format_q4_0: tile_format(kvc_format_q4_0, w, rows, row_bytes, blocks, x, x_stride, y, y_stride, count); break;
    default: tile_format(kvc_format_q8_0, w, rows, row_bytes, blocks, x, x_stride, y, y_stride, count); break;
    }
}

BF16 void kvc_to_bf16(const float *x, uint16_t *out, long n) {
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(out + i), (__m512i)h);
    }
    for (; i < n; i++) {
        const __m128bh h = _mm_cvtneps_pbh(_mm_set1_ps(x[i]));
        out[i] = (uint16_t)_mm_extract_epi16((__m128i)h, 0);
    }
}

#else

int kvc_bf16_tile_supported(void) { return 0; }

void kvc_bf16_tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const uint16_t *x,
                   long x_stride, float *y, long y_stride, int count) {
    (void)format; (void)w; (void)rows; (void)row_bytes; (void)blocks; (void)x; (void)x_stride; (void)y; (void)y_stride; (void)count;
}

void kvc_to_bf16(const float *x, uint16_t *out, long n) { (void)x; (void)out; (void)n; }

#endif
