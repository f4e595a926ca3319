/* The AVX2 + FMA peak loop and streaming-read loop for kernel_bench and spec_bench (compiled with -mavx2 -mfma;
 * kernel_bench_peak.c calls them when the AVX2 table is in use). Same work as the AVX-512 loops. */
#include <immintrin.h>
#include <stddef.h>

float bench_peak_fma_avx2(long iters);
float bench_stream_sum_avx2(const float *p, size_t n);

static float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 12 independent FMA chains of 8 lanes (16 ymm registers: 12 accumulators and the two operands), the multiplier
 * broadcast from memory as the AVX2 GEMM tile does. 2 * iters iterations of 12 * 8 * 2 flops: the flops of the
 * AVX-512 loop's iters / 2 iterations of 24 * 16 * 2. */
float bench_peak_fma_avx2(long iters)
{
    __m256 a[12];
    const __m256 x = _mm256_set1_ps(0.9999999f);
    volatile float yv = 1e-7f;
    const float y = yv;
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < 2 * iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(_mm256_set1_ps(y), x, a[i]);
    }
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    return hsum8(s);
}

/* Sum of n floats (n multiple of 128), two halves side by side (two prefetch streams), as the AVX-512 loop. */
float bench_stream_sum_avx2(const float *p, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    const float *q = p + n / 2;
    for (size_t i = 0; i < n / 2; i += 16) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(q + i));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(q + i + 8));
    }
    return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
