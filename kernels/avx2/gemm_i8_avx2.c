/* W8A8's int8 GEMM on AVX2 (CPUs without AVX-512 VNNI), over KRN_PACK_I8_N32K4, tile 2 rows x 32 outputs. The
 * activations arrive as u8 = q + 128 (krn__quant_rows_*); here they are turned back into s8 q (xor 0x80) and each
 * weight's sign is moved onto its activation: |w| (u8, <= 127) x sign(q, w) (s8) with vpmaddubsw gives pair sums of
 * at most 2 x 127 x 127 = 32258 in magnitude, so the 16-bit pairs never saturate; vpmaddwd by ones adds each output's
 * two pairs into int32. The integer sum is sum(w q) exactly, which is what the VNNI kernel and the reference get as
 * sum(w (q + 128)) - 128 sum(w); then y = (float)acc * (x_scale * w_scale) in their order: bit-identical results. */
#include <immintrin.h>
#include <string.h>

#include "kernels/krn_impl.h"

#define AVX2_INLINE static inline __attribute__((always_inline))
#define MR 2

/* acc[i][v] (+)= sum over one k-quad of the 8 outputs of vector v (32 outputs x 4 bytes = 4 vectors) */
AVX2_INLINE void ukr(const int mr, const int kq, const uint8_t *A, const size_t lda, const int8_t *B, const float *xs,
                     const float *wscale, float *C, const size_t ldc, const int nvalid)
{
    __m256i acc[MR][4];
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
#pragma GCC unroll 2
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) acc[i][v] = _mm256_setzero_si256();
    for (int q = 0; q < kq; q++) {
        __m256i wv[4], wa[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            wv[v] = _mm256_load_si256((const __m256i *)(B + (size_t)q * 128 + 32 * v));
            wa[v] = _mm256_abs_epi8(wv[v]);
        }
#pragma GCC unroll 2
        for (int i = 0; i < mr; i++) {
            int32_t a4;
            memcpy(&a4, A + i * lda + 4 * q, 4);
            const __m256i a = _mm256_xor_si256(_mm256_set1_epi32(a4), flip); /* u8 q + 128 -> s8 q */
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256i p = _mm256_maddubs_epi16(wa[v], _mm256_sign_epi8(a, wv[v]));
                acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(p, ones));
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < mr; i++) {
        const __m256 xsv = _mm256_set1_ps(xs[i]);
        float out[32];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            const __m256 sc = _mm256_mul_ps(xsv, _mm256_load_ps(wscale + 8 * v));
            _mm256_storeu_ps(out + 8 * v, _mm256_mul_ps(_mm256_cvtepi32_ps(acc[i][v]), sc));
        }
        memcpy(C + i * ldc, out, sizeof(float) * (size_t)nvalid);
    }
}

void krn__gemm_i8_avx2_2x32(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy, int nb0,
                            int nb1)
{
    const int kq4 = krn__kq4(w->cols), kq = kq4 / 4;
    const int8_t *P = w->packed;
    for (int nb = nb0; nb < nb1; nb++) {
        const int8_t *panel = P + (size_t)nb * kq * KRN_NR * 4;
        const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
        for (int i0 = 0; i0 < m; i0 += MR) {
            const uint8_t *a = xq + (size_t)i0 * kq4;
            float *c = y + (size_t)i0 * ldy + (size_t)nb * KRN_NR;
            const float *ws = w->pscale + (size_t)nb * KRN_NR;
            if (m - i0 >= 2) ukr(2, kq, a, (size_t)kq4, panel, xs + i0, ws, c, (size_t)ldy, nvalid);
            else ukr(1, kq, a, (size_t)kq4, panel, xs + i0, ws, c, (size_t)ldy, nvalid);
        }
    }
}
