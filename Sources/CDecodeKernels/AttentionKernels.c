// Inner loops of decode attention: the softmax of every cache, and the int8 loops of the fused capsule attention
// (see AttentionKernels.h, AttentionKernel.swift and FusedCapsuleAttention.swift).
//
// Why C: expf was a libm call per score, with the vector registers spilled around it; and the Swift int8 versions widened each 8-byte chunk separately and reduced every score with a lane-by-lane sum();
// here eight key rows are reduced together with one horizontal-add tree, and the value coefficients are read in
// attention order through an index, for ranks that are not whole 8-lane chunks as well.
#include "AttentionKernels.h"

#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline __m256 widen8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/// Eight elements of int8 or float16 rows from element `offset`, as float32 (`half` is a constant where inlined, so
/// each exported kernel compiles to one element type).
static inline __m256 load8(const void *rows, long offset, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)rows + offset)))
                : widen8((const int8_t *)rows + offset);
}

/// Lane r of the result = the sum of v[r]'s eight lanes.
static inline __m256 row_sums(const __m256 v[8]) {
    __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
    __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
    __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

/// e^x for x <= 0 (Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-5 polynomial for e^r, times 2^n);
/// inputs below the smallest normal result give exactly 0, as e^-inf must.
static inline __m256 exp_nonpositive(__m256 x) {
    const __m256 underflow = _mm256_set1_ps(-87.33654f);
    __m256 zero = _mm256_cmp_ps(x, underflow, _CMP_LT_OQ);
    x = _mm256_max_ps(x, underflow);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(e, _mm256_castsi256_ps(bits)));
}

void kvc_softmax(float *x, long n) {
    if (n <= 0) return;
    __m256 top8 = _mm256_set1_ps(-INFINITY);
    long j = 0;
    for (; j + 8 <= n; j += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(x + j));
    float top = -INFINITY;
    float lanes[8];
    _mm256_storeu_ps(lanes, top8);
    for (int k = 0; k < 8; k++) top = lanes[k] > top ? lanes[k] : top;
    for (; j < n; j++) top = x[j] > top ? x[j] : top;
    if (top == -INFINITY) {
        for (j = 0; j < n; j++) x[j] = 0;
        return;
    }
    const __m256 shift = _mm256_set1_ps(top);
    __m256 total8 = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + j), shift));
        _mm256_storeu_ps(x + j, e);
        total8 = _mm256_add_ps(total8, e);
    }
    if (j < n) {
        // The tail through the same polynomial, padded with -infinity (probability 0).
        for (int k = 0; k < 8; k++) lanes[k] = j + k < n ? x[j + k] : -INFINITY;
        __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(lanes), shift));
        total8 = _mm256_add_ps(total8, e);
        _mm256_storeu_ps(lanes, e);
        for (int k = 0; j + k < n; k++) x[j + k] = lanes[k];
    }
    const __m256 inverse = _mm256_set1_ps(1 / sum8(total8));
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inverse));
    float scale = 1 / sum8(total8);
    for (; j < n; j++) x[j] *= scale;
}

/// The three query heads' dot products with token j's key (over its slots), as three 8-lane partial sums.
static inline void token_dots(const void *rows, int half, long j, long d, long slots, const int32_t *neighbours,
                              const float *u, __m256 *a0, __m256 *a1, __m256 *a2) {
    // Two accumulators per head halve the dependency chain of a 64-element row.
    __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, o0 = e0, o1 = e0, o2 = e0;
    for (long m = 0; m < slots; m++) {
        long row = (neighbours ? (long)neighbours[j * slots + m] : j) * d;
        const float *q = u + m * 3 * d;
        long c = 0;
        for (; c + 16 <= d; c += 16) {
            __m256 k = load8(rows, row + c, half), l = load8(rows, row + c + 8, half);
            e0 = _mm256_fmadd_ps(k, _mm256_loadu_ps(q + c), e0);
            e1 = _mm256_fmadd_ps(k, _mm256_loadu_ps(q + d + c), e1);
            e2 = _mm256_fmadd_ps(k, _mm256_loadu_ps(q + 2 * d + c), e2);
            o0 = _mm256_fmadd_ps(l, _mm256_loadu_ps(q + c + 8), o0);
            o1 = _mm256_fmadd_ps(l, _mm256_loadu_ps(q + d + c + 8), o1);
            o2 = _mm256_fmadd_ps(l, _mm256_loadu_ps(q + 2 * d + c + 8), o2);
        }
        if (c < d) {
            __m256 k = load8(rows, row + c, half);
            e0 = _mm256_fmadd_ps(k, _mm256_loadu_ps(q + c), e0);
            e1 = _mm256_fmadd_ps(k, _mm256_loadu_ps(q + d + c), e1);
            e2 = _mm256_fmadd_ps(k, _mm256_loadu_ps(q + 2 * d + c), e2);
        }
    }
    *a0 = _mm256_add_ps(e0, o0);
    *a1 = _mm256_add_ps(e1, o1);
    *a2 = _mm256_add_ps(e2, o2);
}

static inline void scores_group3(const void *rows, int half, long count, long d, long slots,
                                 const int32_t *neighbours, const float *u, float scale, float *scores, long stride) {
    const __m256 s = _mm256_set1_ps(scale);
    long j = 0;
    for (; j + 8 <= count; j += 8) {
        __m256 a0[8], a1[8], a2[8];
        for (int r = 0; r < 8; r++) token_dots(rows, half, j + r, d, slots, neighbours, u, &a0[r], &a1[r], &a2[r]);
        _mm256_storeu_ps(scores + j, _mm256_mul_ps(row_sums(a0), s));
        _mm256_storeu_ps(scores + stride + j, _mm256_mul_ps(row_sums(a1), s));
        _mm256_storeu_ps(scores + 2 * stride + j, _mm256_mul_ps(row_sums(a2), s));
    }
    for (; j < count; j++) {
        __m256 a0, a1, a2;
        token_dots(rows, half, j, d, slots, neighbours, u, &a0, &a1, &a2);
        scores[j] = sum8(a0) * scale;
        scores[stride + j] = sum8(a1) * scale;
        scores[2 * stride + j] = sum8(a2) * scale;
    }
}

/// Columns `start ..< start + 8` of the three probability rows' weighted sums of the (gathered) rows.
static inline void column_sums8(const void *rows, int half, long cols, const int32_t *index, long count,
                                const float *p0, const float *p1, const float *p2, long start, __m256 out[3]) {
    __m256 y0 = _mm256_setzero_ps(), y1 = y0, y2 = y0;
    for (long j = 0; j < count; j++) {
        __m256 v = load8(rows, (index ? (long)index[j] : j) * cols + start, half);
        y0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + j), v, y0);
        y1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j), v, y1);
        y2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + j), v, y2);
    }
    out[0] = y0;
    out[1] = y1;
    out[2] = y2;
}

/// Up to three probability rows at a time, 16 columns (two registers) per pass over the gathered rows.
static inline void accumulate_rows(const void *rows, int half, long cols, const int32_t *index, long count,
                                   const float *p, long p_stride, long heads, float *y) {
    const float *p0 = p, *p1 = p + (heads > 1 ? p_stride : 0), *p2 = p + (heads > 2 ? 2 * p_stride : 0);
    long c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m256 y00 = _mm256_setzero_ps(), y01 = y00, y10 = y00, y11 = y00, y20 = y00, y21 = y00;
        for (long j = 0; j < count; j++) {
            long row = (index ? (long)index[j] : j) * cols + c;
            __m256 v0 = load8(rows, row, half), v1 = load8(rows, row + 8, half);
            __m256 w0 = _mm256_broadcast_ss(p0 + j), w1 = _mm256_broadcast_ss(p1 + j), w2 = _mm256_broadcast_ss(p2 + j);
            y00 = _mm256_fmadd_ps(w0, v0, y00); y01 = _mm256_fmadd_ps(w0, v1, y01);
            y10 = _mm256_fmadd_ps(w1, v0, y10); y11 = _mm256_fmadd_ps(w1, v1, y11);
            y20 = _mm256_fmadd_ps(w2, v0, y20); y21 = _mm256_fmadd_ps(w2, v1, y21);
        }
        __m256 *out[3][2] = {{&y00, &y01}, {&y10, &y11}, {&y20, &y21}};
        for (long k = 0; k < heads; k++) {
            float *o = y + k * cols + c;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *out[k][0]));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), *out[k][1]));
        }
    }
    for (; c + 8 <= cols; c += 8) {
        __m256 out[3];
        column_sums8(rows, half, cols, index, count, p0, p1, p2, c, out);
        for (long k = 0; k < heads; k++) {
            float *o = y + k * cols + c;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), out[k]));
        }
    }
    if (c < cols && cols >= 8) {
        // The last columns through one more 8-wide pass over the row's last 8 elements (a load starting at c could run
        // past the last row); the lanes before c were summed above and are dropped.
        long last = cols - 8;
        __m256 out[3];
        column_sums8(rows, half, cols, index, count, p0, p1, p2, last, out);
        float lanes[3][8];
        for (int k = 0; k < 3; k++) _mm256_storeu_ps(lanes[k], out[k]);
        for (long k = 0; k < heads; k++) {
            for (long e = c; e < cols; e++) y[k * cols + e] += lanes[k][e - last];
        }
        return;
    }
    // Rows narrower than one chunk.
    for (; c < cols; c++) {
        float t0 = 0, t1 = 0, t2 = 0;
        for (long j = 0; j < count; j++) {
            long at = (index ? (long)index[j] : j) * cols + c;
            float v = half ? _cvtsh_ss(((const uint16_t *)rows)[at]) : (float)((const int8_t *)rows)[at];
            t0 += p0[j] * v; t1 += p1[j] * v; t2 += p2[j] * v;
        }
        float t[3] = {t0, t1, t2};
        for (long k = 0; k < heads; k++) y[k * cols + c] += t[k];
    }
}

static inline void accumulate_group(const void *rows, int half, long cols, const int32_t *index, long count,
                                    const float *p, long p_stride, long group, float *y) {
    for (long k = 0; k < group; k += 3) {
        long heads = group - k < 3 ? group - k : 3;
        accumulate_rows(rows, half, cols, index, count, p + k * p_stride, p_stride, heads, y + k * cols);
    }
}

/// u = conj(w) ⊙ q per RoPE pair (re, im interleaved), times the column scales when given.
static inline void transform_query(const float *q, const float *w, const float *column_scale, long d, float *u) {
    for (long e = 0; e < d; e += 8) {
        __m256 qv = _mm256_loadu_ps(q + e), wv = _mm256_loadu_ps(w + e);
        __m256 swapped = _mm256_permute_ps(qv, 0xB1);
        // even lanes: qr·wr + qi·wi, odd lanes: qi·wr − qr·wi
        __m256 uv = _mm256_fmsubadd_ps(qv, _mm256_moveldup_ps(wv), _mm256_mul_ps(swapped, _mm256_movehdup_ps(wv)));
        if (column_scale) uv = _mm256_mul_ps(uv, _mm256_loadu_ps(column_scale + e));
        _mm256_storeu_ps(u + e, uv);
    }
}

void kvc_int8_scores_group3(const int8_t *rows, long count, long d, long slots, const int32_t *neighbours,
                            const float *u, float scale, float *scores, long stride) {
    scores_group3(rows, 0, count, d, slots, neighbours, u, scale, scores, stride);
}

void kvc_int8_rebuilt_scores_group3(const int8_t *rows, long count, long d, long slots, const int32_t *neighbours,
                                    const float *q, const float *w, const float *column_scale, float scale,
                                    float *scores, long stride) {
    float local[8 * 3 * 128];
    const long n = slots * 3 * d;
    float *u = n <= (long)(sizeof local / sizeof local[0]) ? local : malloc(sizeof(float) * (size_t)n);
    for (long m = 0; m < slots; m++)
        for (long k = 0; k < 3; k++) transform_query(q + k * d, w + m * d, column_scale, d, u + (m * 3 + k) * d);
    scores_group3(rows, 0, count, d, slots, neighbours, u, scale, scores, stride);
    if (u != local) free(u);
}

void kvc_half_scores_group3(const uint16_t *rows, long count, long d, const float *q, float scale, float *scores,
                            long stride) {
    scores_group3(rows, 1, count, d, 1, 0, q, scale, scores, stride);
}

void kvc_int8_gather_accumulate(const int8_t *rows, long cols, const int32_t *index, long count, const float *p,
                                long p_stride, long group, float *y) {
    accumulate_group(rows, 0, cols, index, count, p, p_stride, group, y);
}

void kvc_half_accumulate(const uint16_t *rows, long cols, long count, const float *p, long p_stride, long group,
                         float *y) {
    accumulate_group(rows, 1, cols, 0, count, p, p_stride, group, y);
}

#else

void kvc_softmax(float *x, long n) {
    if (n <= 0) return;
    float top = -INFINITY, total = 0;
    for (long j = 0; j < n; j++) top = x[j] > top ? x[j] : top;
    if (top == -INFINITY) {
        for (long j = 0; j < n; j++) x[j] = 0;
        return;
    }
    for (long j = 0; j < n; j++) { x[j] = expf(x[j] - top); total += x[j]; }
    for (long j = 0; j < n; j++) x[j] /= total;
}

void kvc_int8_scores_group3(const int8_t *rows, long count, long d, long slots, const int32_t *neighbours,
                            const float *u, float scale, float *scores, long stride) {
    for (long j = 0; j < count; j++) {
        for (long k = 0; k < 3; k++) {
            float acc = 0;
            for (long m = 0; m < slots; m++) {
                const int8_t *row = rows + (neighbours ? (long)neighbours[j * slots + m] : j) * d;
                const float *q = u + (m * 3 + k) * d;
                for (long e = 0; e < d; e++) acc += q[e] * (float)row[e];
            }
            scores[k * stride + j] = acc * scale;
        }
    }
}

void kvc_int8_rebuilt_scores_group3(const int8_t *rows, long count, long d, long slots, const int32_t *neighbours,
                                    const float *q, const float *w, const float *column_scale, float scale,
                                    float *scores, long stride) {
    float *u = malloc(sizeof(float) * (size_t)(slots * 3 * d));
    for (long m = 0; m < slots; m++) {
        for (long k = 0; k < 3; k++) {
            for (long e = 0; e < d; e += 2) {
                float qr = q[k * d + e], qi = q[k * d + e + 1], wr = w[m * d + e], wi = w[m * d + e + 1];
                float *o = u + (m * 3 + k) * d + e;
                o[0] = (qr * wr + qi * wi) * (column_scale ? column_scale[e] : 1);
                o[1] = (qi * wr - qr * wi) * (column_scale ? column_scale[e + 1] : 1);
            }
        }
    }
    kvc_int8_scores_group3(rows, count, d, slots, neighbours, u, scale, scores, stride);
    free(u);
}

void kvc_int8_gather_accumulate(const int8_t *rows, long cols, const int32_t *index, long count, const float *p,
                                long p_stride, long group, float *y) {
    for (long k = 0; k < group; k++) {
        for (long j = 0; j < count; j++) {
            const int8_t *row = rows + (long)index[j] * cols;
            float w = p[k * p_stride + j];
            for (long c = 0; c < cols; c++) y[k * cols + c] += w * (float)row[c];
        }
    }
}

void kvc_half_scores_group3(const uint16_t *rows, long count, long d, const float *q, float scale, float *scores,
                            long stride) {
    for (long j = 0; j < count; j++) {
        for (long k = 0; k < 3; k++) {
            float acc = 0;
            for (long e = 0; e < d; e++) acc += q[k * d + e] * (float)((const _Float16 *)rows)[j * d + e];
            scores[k * stride + j] = acc * scale;
        }
    }
}

void kvc_half_accumulate(const uint16_t *rows, long cols, long count, const float *p, long p_stride, long group,
                         float *y) {
    for (long k = 0; k < group; k++) {
        for (long j = 0; j < count; j++) {
            float w = p[k * p_stride + j];
            for (long c = 0; c < cols; c++) y[k * cols + c] += w * (float)((const _Float16 *)rows)[j * cols + c];
        }
    }
}

#endif

// Both builds: the groups one after another through the single-group kernel above.
void kvc_int8_rebuilt_scores_groups3(const int8_t *rows, long d, long groups, const int32_t *members,
                                     const int32_t *slots, const int32_t *neighbours, const float *q, const float *w,
                                     const float *column_scale, float scale, float *scores, long stride) {
    for (long g = 0; g < groups; g++) {
        kvc_int8_rebuilt_scores_group3(rows, members[g], d, slots[g], neighbours, q, w, column_scale, scale, scores, stride);
        neighbours += (long)members[g] * slots[g];
        w += (long)slots[g] * d;
        scores += members[g];
    }
}
