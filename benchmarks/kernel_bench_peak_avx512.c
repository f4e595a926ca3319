/* The AVX-512 register-resident peak loops and streaming-read loop for kernel_bench and spec_bench (compiled with
 * AVX-512 flags; kernel_bench_peak.c calls them only on a CPU with AVX-512). Each returns a sum of its work so the
 * compiler cannot drop it. */
#include <immintrin.h>
#include <stddef.h>

float bench_peak_fma_avx512(long iters);
float bench_peak_bf16dot_avx512(long iters);
float bench_stream_sum_avx512(const float *p, size_t n);

/* 24 independent FMA chains of 16 lanes, the shape of the GEMM tile's accumulators (12 rows x 2 vectors),
 * with the multiplier broadcast from memory as the tile does: 24 * 16 * 2 flops per iteration */
float bench_peak_fma_avx512(long iters)
{
    __m512 a[24];
    const __m512 x = _mm512_set1_ps(0.9999999f);
    volatile float yv = 1e-7f;
    const float y = yv;
    for (int i = 0; i < 24; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters / 2; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(y), x, a[i]);
    }
    __m512 s = a[0];
    for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

/* 12 independent vdpbf16ps chains: 12 * 32 pairs * 2 flops per iteration */
float bench_peak_bf16dot_avx512(long iters)
{
    __m512 a[12];
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f003f00);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    __m512 a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5];
    __m512 a6 = a[6], a7 = a[7], a8 = a[8], a9 = a[9], a10 = a[10], a11 = a[11];
    for (long it = 0; it < iters; it++) {
        a0 = _mm512_dpbf16_ps(a0, x, y); a1 = _mm512_dpbf16_ps(a1, x, y); a2 = _mm512_dpbf16_ps(a2, x, y);
        a3 = _mm512_dpbf16_ps(a3, x, y); a4 = _mm512_dpbf16_ps(a4, x, y); a5 = _mm512_dpbf16_ps(a5, x, y);
        a6 = _mm512_dpbf16_ps(a6, x, y); a7 = _mm512_dpbf16_ps(a7, x, y); a8 = _mm512_dpbf16_ps(a8, x, y);
        a9 = _mm512_dpbf16_ps(a9, x, y); a10 = _mm512_dpbf16_ps(a10, x, y); a11 = _mm512_dpbf16_ps(a11, x, y);
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
    }
    a[0] = a0; a[1] = a1; a[2] = a2; a[3] = a3; a[4] = a4; a[5] = a5;
    a[6] = a6; a[7] = a7; a[8] = a8; a[9] = a9; a[10] = a10; a[11] = a11;
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

/* Sum of n floats (n multiple of 128): the read-only streaming bandwidth a GEMV could reach. Two halves are
 * read side by side (two hardware-prefetch streams, as a GEMV over two weight panels has). */
float bench_stream_sum_avx512(const float *p, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    const float *q = p + n / 2;
    for (size_t i = 0; i < n / 2; i += 32) {
        s0 = _mm512_add_ps(s0, _mm512_load_ps(p + i));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(p + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(q + i));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(q + i + 16));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
