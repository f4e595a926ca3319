/* FP8 (e4m3 + block scales) GEMM/GEMV on AVX-512, tile 12 rows x 32 outputs. Weights stay FP8 in memory
 * (KRN_PACK_F8_N32K1: per k, the 32 outputs' bytes), decoded in registers: sign-extend, shift the 7
 * exponent/mantissa bits into a float's bits 26..20 and multiply by the output row's block scale * 2^120,
 * which gives exactly e4m3_to_f32(v) * scale, the reference's value. f32 activations and accumulation.
 * Same summation order and order of work as the BF16 kernel (gemm_bf16_avx512.c): one FMA chain per KC chunk,
 * chunks added in k order, so a row's result never depends on m; m <= MSMALL walks each panel once. */
#include "kernels/avx512/avx512_util.h"

#define MR 12
#define KC 256
#define MC 144
#define MSMALL 16

KRN_INLINE __m512 dec(const uint8_t *p, __m512 s)
{
    return _mm512_mul_ps(krn__e4m3x16_bits(_mm_load_si128((const __m128i *)p)), s);
}

/* C[mr, 32] (+)= A[mr, k0:k0+kc] . W^T over the panel's k rows [k0, k0+kc); S: the panel's scales [kb][32] */
KRN_INLINE void ukr(const int mr, const int k0, const int kc, const int bc, const float *A, const size_t lda,
                    const uint8_t *B, const float *S, float *C, const size_t ldc, const __mmask16 m0,
                    const __mmask16 m1, const int load_c)
{
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    int k = 0;
    while (k < kc) {
        const int kb = (k0 + k) / bc, kend = PD_MIN(kc, (kb + 1) * bc - k0);
        const __m512 s0 = _mm512_load_ps(S + (size_t)kb * 32), s1 = _mm512_load_ps(S + (size_t)kb * 32 + 16);
        for (; k + 1 < kend; k += 2) {
            const __m512 w0 = dec(B + (size_t)k * 32, s0), w1 = dec(B + (size_t)k * 32 + 16, s1);
            const __m512 v0 = dec(B + (size_t)(k + 1) * 32, s0), v1 = dec(B + (size_t)(k + 1) * 32 + 16, s1);
#pragma GCC unroll 12
            for (int i = 0; i < mr; i++) {
                const __m512 a0 = _mm512_set1_ps(A[i * lda + k]), a1 = _mm512_set1_ps(A[i * lda + k + 1]);
                c0[i] = _mm512_fmadd_ps(a0, w0, c0[i]);
                c1[i] = _mm512_fmadd_ps(a0, w1, c1[i]);
                c0[i] = _mm512_fmadd_ps(a1, v0, c0[i]);
                c1[i] = _mm512_fmadd_ps(a1, v1, c1[i]);
            }
        }
        if (k < kend) {
            const __m512 w0 = dec(B + (size_t)k * 32, s0), w1 = dec(B + (size_t)k * 32 + 16, s1);
#pragma GCC unroll 12
            for (int i = 0; i < mr; i++) {
                const __m512 a0 = _mm512_set1_ps(A[i * lda + k]);
                c0[i] = _mm512_fmadd_ps(a0, w0, c0[i]);
                c1[i] = _mm512_fmadd_ps(a0, w1, c1[i]);
            }
            k++;
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        if (load_c) {
            c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, c));
            c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, c + 16));
        }
        _mm512_mask_storeu_ps(c, m0, c0[i]);
        _mm512_mask_storeu_ps(c + 16, m1, c1[i]);
    }
}

static void ukr_any(int mr, int k0, int kc, int bc, const float *A, size_t lda, const uint8_t *B, const float *S,
                    float *C, size_t ldc, __mmask16 m0, __mmask16 m1, int load_c)
{
    switch (mr) {
#define CASE(n) case n: ukr(n, k0, kc, bc, A, lda, B, S, C, ldc, m0, m1, load_c); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
    }
}

void krn__gemm_f8_avx512_12x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1)
{
    const int K = w->cols, kb = krn__f8_kblocks(w);
    const uint8_t *P = w->packed;
    if (m <= MSMALL) {
        const int tiles = (m + MR - 1) / MR, tr = (m + tiles - 1) / tiles;
        for (int nb = nb0; nb < nb1; nb++) {
            const uint8_t *panel = P + (size_t)nb * K * KRN_NR;
            const float *S = w->pscale + (size_t)nb * kb * KRN_NR;
            const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
            const __mmask16 m0 = krn__mask16(nvalid), m1 = krn__mask16(nvalid - 16);
            for (int kc0 = 0; kc0 < K; kc0 += KC) {
                const int kc = PD_MIN(KC, K - kc0);
                for (int i0 = 0; i0 < m; i0 += tr)
                    ukr_any(PD_MIN(tr, m - i0), kc0, kc, w->block_c, x + (size_t)i0 * K + kc0, (size_t)K,
                            panel + (size_t)kc0 * KRN_NR, S, y + (size_t)i0 * ldy + (size_t)nb * KRN_NR, (size_t)ldy,
                            m0, m1, kc0 > 0);
            }
        }
        return;
    }
    for (int mc0 = 0; mc0 < m; mc0 += MC) {
        const int mc1 = PD_MIN(m, mc0 + MC);
        for (int kc0 = 0; kc0 < K; kc0 += KC) {
            const int kc = PD_MIN(KC, K - kc0);
            for (int nb = nb0; nb < nb1; nb++) {
                const uint8_t *panel = P + ((size_t)nb * K + kc0) * KRN_NR;
                const float *S = w->pscale + (size_t)nb * kb * KRN_NR;
                const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
                const __mmask16 m0 = krn__mask16(nvalid), m1 = krn__mask16(nvalid - 16);
                for (int i0 = mc0; i0 < mc1; i0 += MR)
                    ukr_any(PD_MIN(MR, mc1 - i0), kc0, kc, w->block_c, x + (size_t)i0 * K + kc0, (size_t)K, panel,
                            S, y + (size_t)i0 * ldy + (size_t)nb * KRN_NR, (size_t)ldy, m0, m1, kc0 > 0);
            }
        }
    }
}
