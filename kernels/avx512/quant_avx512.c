/* W8A8's per-row activation quantisation on AVX-512 F/BW/VL: u8 = round(x * 127 / amax) + 128, the reference's
 * rounding, so the VNNI and AVX2 int8 GEMMs that read it give kernels/ref/gemm_i8_ref.c's bits. Needs no VNNI: a
 * CPU without it gets this with the AVX2 int8 GEMM. */
#include "kernels/avx512/avx512_util.h"

void krn__quant_rows_avx512(const float *x, int m, int k, int kq4, uint8_t *xq, float *xs)
{
    for (int i = 0; i < m; i++) {
        const float *r = x + (size_t)i * k;
        uint8_t *q = xq + (size_t)i * kq4;
        __m512 mx = _mm512_setzero_ps();
        for (int c = 0; c < k; c += 16)
            mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(krn__mask16(k - c), r + c)));
        const float amax = _mm512_reduce_max_ps(mx);
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        xs[i] = amax / 127.0f;
        const __m512 vinv = _mm512_set1_ps(inv);
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(128);
        for (int c = 0; c < kq4; c += 16) {
            const __mmask16 km = krn__mask16(k - c);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(km, r + c), vinv));
            v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, lo), hi), off);
            _mm_mask_storeu_epi8(q + c, krn__mask16(kq4 - c), _mm512_cvtepi32_epi8(v));
        }
    }
}
