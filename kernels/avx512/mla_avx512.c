/* The two small products of MLA's absorbed decode form on AVX-512, over the plain (unpacked) kv_b_proj rows:
 * krn_matmul_sub (q_nope into the latent space: axpy of weight rows) and krn_linear_rows (latent back to v:
 * dots of weight rows), each for several rows of x at once (one head's queries of a whole pass: every weight
 * vector is loaded and converted once for up to 4 rows). BF16 and F32 rows convert in registers; other types go
 * through krn_mat_row_part. */
#include "kernels/avx512/avx512_util.h"

/* 16 values of row r of W from column c (lanes past the mask are zero) as f32: BF16, F32 and FP8 (16 columns in
 * one scale block) in registers, anything else through krn_mat_row_part (buf: 16 floats). */
static inline __m512 w16(const krn_mat *w, int r, int c, __mmask16 km, int nv, float *buf) /* nv: valid columns */
{
    const size_t base = (size_t)r * w->cols + c;
    if (nv <= 0) return _mm512_setzero_ps();
    if (w->type == KRN_BF16) return krn__bf16x16_to_f32((const krn_bf16 *)w->data + base, km);
    if (w->type == KRN_F32) return _mm512_maskz_loadu_ps(km, (const float *)w->data + base);
    if (w->type == KRN_F8E4M3 && c / w->block_c == (c + PD_MIN(16, nv) - 1) / w->block_c) {
        /* one scale block: value * 2^-120 exactly, times scale * 2^120 (exact), one rounding: krn_mat_row_part's
         * bits */
        const int sc = (w->cols + w->block_c - 1) / w->block_c;
        const float s = w->scale[(size_t)(r / w->block_r) * sc + c / w->block_c] * 0x1p120f;
        const __m128i q = _mm_maskz_loadu_epi8(km, (const uint8_t *)w->data + base);
        return _mm512_mul_ps(krn__e4m3x16_bits(q), _mm512_set1_ps(s));
    }
    krn_mat_row_part(w, r, c, PD_MIN(16, nv), buf);
    return _mm512_maskz_loadu_ps(km, buf);
}

/* Up to 4 rows x 64 columns in 16 accumulators; per output one FMA chain over d in order (as the previous
 * one-row kernel, which kept y in memory: the same operations, so the same bits). */
KRN_INLINE void msub_tile(const int mr, const krn_mat *w, int r0, int c, int nc, const float *x, size_t ldx, int k,
                          float *y, size_t ldy, int accumulate)
{
    __m512 acc[4][4];
    __mmask16 km[4];
    float buf[16] __attribute__((aligned(64)));
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) km[v] = krn__mask16(nc - 16 * v); /* a vector past nc: mask 0, zeros, not stored */
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            acc[i][v] = accumulate ? _mm512_maskz_loadu_ps(km[v], y + (size_t)i * ldy + 16 * v) : _mm512_setzero_ps();
    for (int d = 0; d < k; d++) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) wv[v] = w16(w, r0 + d, c + 16 * v, km[v], nc - 16 * v, buf);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + d]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) acc[i][v] = _mm512_fmadd_ps(a, wv[v], acc[i][v]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16 * v, km[v], acc[i][v]);
}

void krn__matmul_sub_avx512(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n,
                            float *y, size_t ldy, int accumulate)
{
    for (int c = 0; c < n; c += 64) {
        const int nc = PD_MIN(64, n - c);
        for (int i0 = 0; i0 < m; i0 += 4) {
            const float *xi = x + (size_t)i0 * ldx;
            float *yi = y + (size_t)i0 * ldy;
            switch (PD_MIN(4, m - i0)) {
            case 1: msub_tile(1, w, r0, c0 + c, nc, xi, ldx, k, yi + c, ldy, accumulate); break;
            case 2: msub_tile(2, w, r0, c0 + c, nc, xi, ldx, k, yi + c, ldy, accumulate); break;
            case 3: msub_tile(3, w, r0, c0 + c, nc, xi, ldx, k, yi + c, ldy, accumulate); break;
            default: msub_tile(4, w, r0, c0 + c, nc, xi, ldx, k, yi + c, ldy, accumulate); break;
            }
        }
    }
}

/* Row j of the band against up to 4 vectors: one accumulator per vector, FMAs over 16-column steps in order, then
 * the horizontal sum (as the previous one-vector kernel: the same bits). */
KRN_INLINE void lrows_tile(const int mr, const krn_mat *w, int r, const float *x, size_t ldx, float *y, size_t ldy)
{
    __m512 acc[4];
    float buf[16] __attribute__((aligned(64)));
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) acc[i] = _mm512_setzero_ps();
    for (int c = 0; c < w->cols; c += 16) {
        const __mmask16 km = krn__mask16(w->cols - c);
        const __m512 wv = w16(w, r, c, km, w->cols - c, buf);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++)
            acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, x + (size_t)i * ldx + c), wv, acc[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) y[(size_t)i * ldy] = _mm512_reduce_add_ps(acc[i]);
}

void krn__linear_rows_avx512(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y,
                             size_t ldy)
{
    for (int j = 0; j < n; j++)
        for (int i0 = 0; i0 < m; i0 += 4) {
            const float *xi = x + (size_t)i0 * ldx;
            float *yi = y + (size_t)i0 * ldy + j;
            switch (PD_MIN(4, m - i0)) {
            case 1: lrows_tile(1, w, r0 + j, xi, ldx, yi, ldy); break;
            case 2: lrows_tile(2, w, r0 + j, xi, ldx, yi, ldy); break;
            case 3: lrows_tile(3, w, r0 + j, xi, ldx, yi, ldy); break;
            default: lrows_tile(4, w, r0 + j, xi, ldx, yi, ldy); break;
            }
        }
}
