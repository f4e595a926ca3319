/* W8A8's int8 GEMM on AVX-512 VNNI (vpdpbusd: u8 activations x s8 weights, four products summed into each int32
 * lane), tile 12 rows x 32 outputs over KRN_PACK_I8_N32K4; the activations come from kernels/avx512/quant_avx512.c.
 * y = (acc - 128 * rowsum(W)) * (x_scale * w_scale), in the reference's order, so results are bit-identical
 * to kernels/ref/gemm_i8_ref.c. */
#include "kernels/avx512/avx512_util.h"

#define MR 12
#define MC 192

KRN_INLINE void ukr(const int mr, const int kq, const uint8_t *A, const size_t lda, const int8_t *B, const float *xs,
                    const float *wscale, const int32_t *wsum, float *C, const size_t ldc, const __mmask16 m0,
                    const __mmask16 m1)
{
    const int dual = mr <= 4;
    __m512i c0[MR], c1[MR], d0[MR], d1[MR];
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        c0[i] = c1[i] = _mm512_setzero_si512();
        if (dual) d0[i] = d1[i] = _mm512_setzero_si512();
    }
    int q = 0;
    for (; q + 1 < kq; q += 2) {
        const __m512i b0 = _mm512_load_si512(B + (size_t)q * 128), b1 = _mm512_load_si512(B + (size_t)q * 128 + 64);
        const __m512i e0 = _mm512_load_si512(B + (size_t)q * 128 + 128),
                      e1 = _mm512_load_si512(B + (size_t)q * 128 + 192);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            int32_t a4, a5;
            memcpy(&a4, A + i * lda + 4 * q, 4);
            memcpy(&a5, A + i * lda + 4 * q + 4, 4);
            const __m512i a0 = _mm512_set1_epi32(a4), a1 = _mm512_set1_epi32(a5);
            c0[i] = _mm512_dpbusd_epi32(c0[i], a0, b0);
            c1[i] = _mm512_dpbusd_epi32(c1[i], a0, b1);
            if (dual) {
                d0[i] = _mm512_dpbusd_epi32(d0[i], a1, e0);
                d1[i] = _mm512_dpbusd_epi32(d1[i], a1, e1);
            } else {
                c0[i] = _mm512_dpbusd_epi32(c0[i], a1, e0);
                c1[i] = _mm512_dpbusd_epi32(c1[i], a1, e1);
            }
        }
    }
    if (q < kq) {
        const __m512i b0 = _mm512_load_si512(B + (size_t)q * 128), b1 = _mm512_load_si512(B + (size_t)q * 128 + 64);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            int32_t a4;
            memcpy(&a4, A + i * lda + 4 * q, 4);
            const __m512i a0 = _mm512_set1_epi32(a4);
            c0[i] = _mm512_dpbusd_epi32(c0[i], a0, b0);
            c1[i] = _mm512_dpbusd_epi32(c1[i], a0, b1);
        }
    }
    const __m512i s0 = _mm512_slli_epi32(_mm512_load_si512(wsum), 7),
                  s1 = _mm512_slli_epi32(_mm512_load_si512(wsum + 16), 7);
    const __m512 w0 = _mm512_load_ps(wscale), w1 = _mm512_load_ps(wscale + 16);
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        if (dual) {
            c0[i] = _mm512_add_epi32(c0[i], d0[i]);
            c1[i] = _mm512_add_epi32(c1[i], d1[i]);
        }
        const __m512 xsv = _mm512_set1_ps(xs[i]);
        const __m512 r0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c0[i], s0)), _mm512_mul_ps(xsv, w0));
        const __m512 r1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c1[i], s1)), _mm512_mul_ps(xsv, w1));
        _mm512_mask_storeu_ps(C + i * ldc, m0, r0);
        _mm512_mask_storeu_ps(C + i * ldc + 16, m1, r1);
    }
}

static void ukr_any(int mr, int kq, const uint8_t *A, size_t lda, const int8_t *B, const float *xs,
                    const float *wscale, const int32_t *wsum, float *C, size_t ldc, __mmask16 m0, __mmask16 m1)
{
    switch (mr) {
#define CASE(n) case n: ukr(n, kq, A, lda, B, xs, wscale, wsum, C, ldc, m0, m1); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
    }
}

void krn__gemm_i8_avx512vnni_12x32(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy,
                                   int nb0, int nb1)
{
    const int kq4 = krn__kq4(w->cols), kq = kq4 / 4;
    const int8_t *P = w->packed;
    for (int mc0 = 0; mc0 < m; mc0 += MC) {
        const int mc1 = PD_MIN(m, mc0 + MC);
        for (int nb = nb0; nb < nb1; nb++) {
            const int8_t *panel = P + (size_t)nb * kq * KRN_NR * 4;
            const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
            const __mmask16 m0 = krn__mask16(nvalid), m1 = krn__mask16(nvalid - 16);
            for (int i0 = mc0; i0 < mc1; i0 += MR)
                ukr_any(PD_MIN(MR, mc1 - i0), kq, xq + (size_t)i0 * kq4, (size_t)kq4, panel, xs + i0,
                        w->pscale + (size_t)nb * KRN_NR, w->psum + (size_t)nb * KRN_NR,
                        y + (size_t)i0 * ldy + (size_t)nb * KRN_NR, (size_t)ldy, m0, m1);
        }
    }
}
