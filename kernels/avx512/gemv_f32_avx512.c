/* F32-weight products on AVX-512 for any number of activation rows (the router; float32 models): 4 weight rows x
 * up to 4 activation rows per pass over K, 16 lanes, horizontal sums at the end. Reads the plain row-major data.
 * Each output is one FMA chain over k in 16-lane steps whatever m is, so a row gives the same bits alone, in a
 * decode batch, in a verify pass or in a prompt chunk of any length (OpenBLAS's sgemm does not promise that, so
 * it is not used here). The 4 weight rows (16 KB at K = 1024) stay in L1 while every 4-row group of a block of
 * x rows (kept in L2) passes over them. */
#include "kernels/avx512/avx512_util.h"

KRN_INLINE void ukr(const int mr, const int nr, const float *W, const int K, const float *x, float *y, const int ldy)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) acc[i][r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        const __mmask16 km = krn__mask16(K - k);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) wv[r] = _mm512_maskz_loadu_ps(km, W + (size_t)r * K + k);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m512 xv = _mm512_maskz_loadu_ps(km, x + (size_t)i * K + k);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) y[(size_t)i * ldy + r] = _mm512_reduce_add_ps(acc[i][r]);
}

void krn__gemv_f32_avx512_4x16(const krn_mat *w, const float *x, int m, float *y, int ldy, int n0, int n1)
{
    const float *W = w->data;
    const int K = w->cols;
    /* many rows (prefill): blocks of rows that stay in L2 (~256 KB) while the weight rows pass over them */
    const int mb = PD_MAX(4, (int)((256 << 10) / ((size_t)K * sizeof(float))) & ~3);
    for (int b0 = 0; b0 < m; b0 += mb) {
        const int b1 = PD_MIN(m, b0 + mb);
        for (int n = n0; n < n1; n += 4) {
            const int nr = PD_MIN(4, n1 - n);
            for (int i0 = b0; i0 < b1; i0 += 4) {
                const int mr = PD_MIN(4, b1 - i0);
                const float *Wn = W + (size_t)n * K, *xi = x + (size_t)i0 * K;
                float *yi = y + (size_t)i0 * ldy + n;
#define CASE(a, b) if (mr == a && nr == b) { ukr(a, b, Wn, K, xi, yi, ldy); continue; }
                CASE(1, 4) CASE(2, 4) CASE(3, 4) CASE(4, 4)
                CASE(1, 1) CASE(1, 2) CASE(1, 3) CASE(2, 1) CASE(2, 2) CASE(2, 3)
                CASE(3, 1) CASE(3, 2) CASE(3, 3) CASE(4, 1) CASE(4, 2) CASE(4, 3)
#undef CASE
            }
        }
    }
}
