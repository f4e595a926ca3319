/* Helpers shared by the AVX-512 kernels (included only from files compiled with AVX-512 flags): tail masks,
 * bf16/e4m3 -> f32 conversion in registers and a vector exp. */
#ifndef KRN_AVX512_UTIL_H
#define KRN_AVX512_UTIL_H

#include <immintrin.h>

#include "kernels/krn_impl.h"

#define KRN_INLINE static inline __attribute__((always_inline))

/* Lanes [0, n) of 16 (n may be <= 0 or >= 16). */
KRN_INLINE __mmask16 krn__mask16(int n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Writes one row of a 32-output tile: c[0..32) = v (masked by m0/m1), or c + v when add (the chunks after a
 * GEMM's first: each output's KC-chunk sums are added to y in k order). */
KRN_INLINE void krn__store_row32(float *c, __m512 v0, __m512 v1, __mmask16 m0, __mmask16 m1, int add)
{
    if (add) {
        v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), v0);
        v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), v1);
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
}

/* 16 bf16 -> 16 f32 (exact). */
KRN_INLINE __m512 krn__bf16x16_to_f32(const krn_bf16 *p, __mmask16 k)
{
    __m256i h = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 e4m3 bytes -> their bits placed in f32 (value * 2^-120): sign to bit 31, exponent+mantissa to bits 26..20.
 * Exact, including subnormals and zero; NaN codes (0x7f/0xff) decode to 480 * 2^-120, never produced by
 * DeepSeek's quantiser (it saturates to 448). */
KRN_INLINE __m512 krn__e4m3x16_bits(__m128i b)
{
    __m512i v = _mm512_slli_epi32(_mm512_cvtepi8_epi32(b), 20);
    return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0x87f00000u)));
}

/* exp(x) for x <= 0 mostly (online softmax), about 2 ulp; exp(-inf) = 0, large negative flushes to 0. */
KRN_INLINE __m512 krn__exp512(__m512 x)
{
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2hi = _mm512_set1_ps(0.693359375f), ln2lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2hi, x);
    r = _mm512_fnmadd_ps(n, ln2lo, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n); /* p * 2^n, gradual underflow to 0 */
}

#endif
