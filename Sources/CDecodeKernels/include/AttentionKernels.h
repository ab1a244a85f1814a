#ifndef KVC_ATTENTION_KERNELS_H
#define KVC_ATTENTION_KERNELS_H

#include <stdint.h>

/// In-place softmax of `n` scores; entries at -infinity get probability 0 (all of them at -infinity: all 0).
/// The exponential is a vectorized polynomial within 2 ulp of expf (the scalar libm call per entry was about a
/// quarter of a decode step's attention).
void kvc_softmax(float *x, long n);

/// Scores of three query heads against int8 key rows (the fused capsule attention's retained and rebuilt keys):
/// `scores[k * stride + j] = scale * Σ_m Σ_e u[(m * 3 + k) * d + e] * rows[row(j, m) * d + e]` for j in 0..<count,
/// where `row(j, m) = neighbours[j * slots + m]`, or `j` when `neighbours` is NULL (then `slots` must be 1).
/// `d` is a multiple of 8. Int8 column scales are expected folded into `u`.
void kvc_int8_scores_group3(const int8_t *rows, long count, long d, long slots, const int32_t *neighbours,
                            const float *u, float scale, float *scores, long stride);

/// Scores of three query heads against keys rebuilt from int8 neighbours (the fused path's dropped tokens of one
/// neighbour group): `kvc_int8_scores_group3` with `u[m][k] = conj(w[m]) ⊙ q[k]`, the product taken per RoPE pair
/// (re, im interleaved) and multiplied by `column_scale` (the keys' int8 column scales; NULL for none).
/// `q` is `[3][d]`, `w` `[slots][d]`; `d` is a multiple of 8.
void kvc_int8_rebuilt_scores_group3(const int8_t *rows, long count, long d, long slots, const int32_t *neighbours,
                                    const float *q, const float *w, const float *column_scale, float scale,
                                    float *scores, long stride);

/// `kvc_int8_rebuilt_scores_group3` for `groups` groups back to back: group g has `members[g]` tokens of `slots[g]`
/// neighbours each (their indices next in `neighbours`), its weights next in `w` (`slots[g] * d` floats), and its
/// scores in the next `members[g]` columns. One call per query row and head instead of one per group: under
/// score-based retention most groups have a single member.
void kvc_int8_rebuilt_scores_groups3(const int8_t *rows, long d, long groups, const int32_t *members,
                                     const int32_t *slots, const int32_t *neighbours, const float *q, const float *w,
                                     const float *column_scale, float scale, float *scores, long stride);

/// `kvc_int8_scores_group3` for float16 rows (bit patterns), one slot, no neighbour index: the text keys.
void kvc_half_scores_group3(const uint16_t *rows, long count, long d, const float *q, float scale, float *scores,
                            long stride);

/// `y[k * cols + c] += Σ_j p[k * p_stride + j] * rows[index[j] * cols + c]` for k in 0..<group, j in 0..<count and
/// every column c (any `cols`): probability rows times int8 rows gathered by `index` (the value PCA's coefficients
/// in the fused path, read in the order attention sees the tokens, so nothing is scattered first), or taken in order
/// when `index` is NULL.
void kvc_int8_gather_accumulate(const int8_t *rows, long cols, const int32_t *index, long count, const float *p,
                                long p_stride, long group, float *y);

/// `kvc_int8_gather_accumulate` for float16 rows (bit patterns) in stored order: the text
/// values.
void kvc_half_accumulate(const uint16_t *rows, long cols, long count, const float *p, long p_stride, long group,
                         float *y);

#endif
