#ifndef KVC_DECODE_KERNELS_H
#define KVC_DECODE_KERNELS_H

#include <stdint.h>

/// Whether this CPU runs the AVX-512 tile kernels (avx512f, avx512vl, avx512dq, avx512bw, f16c, fma).
int kvc_wide_tile_supported(void);

/// Most vectors one call serves (two per 512-bit register).
enum { kvc_wide_tile_max = 16 };

/// Block formats of `kvc_wide_tile`.
enum { kvc_format_q4_1 = 0, kvc_format_q4_0 = 1, kvc_format_q8_0 = 2 };

/// `y[v][r] = W[r] · x[v]` for `rows` rows of ggml blocks (`blocks` 32-weight blocks a row, rows `row_bytes` apart)
/// and `count` (1...16) vectors, each summed in exactly the order of the single-vector kernel (`BlockMatVec`), so
/// each result is bit-identical to it.
///
/// `x_pairs`: the vectors interleaved two by two, `[count/2 rounded up][blocks][4][16]` floats: entry
/// `[p][b][k][h * 8 + j]` is element `b * 32 + k * 8 + j` of vector `2p + h` (the second half of a last odd pair
/// is ignored). `sums`: `[blocks][16]`, entry `[b][v]` the sum of vector v's block b (Q4 formats only; unused lanes
/// any value). Output: `y[v * y_stride + r]`, `y` already offset to the first vector's first row.
void kvc_wide_tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const float *x_pairs,
                   const float *sums, float *y, long y_stride, int count);

/// Whether this CPU runs `kvc_bf16_tile` (the wide-tile features plus avx512bf16).
int kvc_bf16_tile_supported(void);

/// `y[v][r] ≈ W[r] · x[v]` with bfloat16 products: each block's weights are dequantized to float32, rounded to
/// bfloat16 and multiplied with the bfloat16 vectors by `vdpbf16ps` (float32 sums). `x` is `[count][x_stride]`
/// bfloat16 bit patterns (`kvc_to_bf16`), `count` 1...16. Each vector's sums take the same order whatever `count`
/// is. Output: `y[v * y_stride + r]`.
void kvc_bf16_tile(int format, const uint8_t *w, long rows, long row_bytes, long blocks, const uint16_t *x,
                   long x_stride, float *y, long y_stride, int count);

/// `out[i]` = `x[i]` rounded to bfloat16 (nearest, ties to even), as bit patterns.
void kvc_to_bf16(const float *x, uint16_t *out, long n);

#endif
