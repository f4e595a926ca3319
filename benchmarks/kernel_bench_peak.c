/* kernel_bench's and spec_bench's machine loops (peak multiply-adds, streaming read), for the kernel table in use:
 * the AVX-512 loops (kernel_bench_peak_avx512.c) under an avx512 table, the AVX2 + FMA ones
 * (kernel_bench_peak_avx2.c) under avx2, and plain C (what the compiler's baseline vectorises) under the
 * portable table. So a kernel's share of "peak" is against the instructions its own table may use. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "benchmarks/kernel_bench_peak.h"
#include "kernels/krn.h"

float bench_peak_fma_avx512(long iters);
float bench_peak_bf16dot_avx512(long iters);
float bench_stream_sum_avx512(const float *p, size_t n);
float bench_peak_fma_avx2(long iters);
float bench_stream_sum_avx2(const float *p, size_t n);

static int isa(void)
{
    const char *k = krn_kernels_name();
    return !strncmp(k, "avx512", 6) ? 2 : !strncmp(k, "avx2", 4) ? 1 : 0;
}

const char *bench_peak_isa(void)
{
    static const char *const names[] = {"portable C (baseline vectors, mul + add)", "AVX2 vfmadd231ps ymm, 12 chains",
                                        "AVX-512 vfmadd231ps zmm, 24 chains"};
    return names[isa()];
}

/* 8 chains of 8 lanes; 3 * iters iterations of 8 * 8 * 2 flops: the AVX-512 loop's work */
static float peak_portable(long iters)
{
    float a[8][8];
    volatile float xv = 0.9999999f, yv = 1e-7f;
    const float x = xv, y = yv;
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < 8; l++) a[i][l] = (float)(i + l);
    for (long it = 0; it < 3 * iters; it++)
        for (int i = 0; i < 8; i++)
            for (int l = 0; l < 8; l++) a[i][l] = a[i][l] * x + y;
    float s = 0;
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < 8; l++) s += a[i][l];
    return s;
}

float bench_peak_fma(long iters)
{
    switch (isa()) {
    case 2: return bench_peak_fma_avx512(iters);
    case 1: return bench_peak_fma_avx2(iters);
    default: return peak_portable(iters);
    }
}

float bench_peak_bf16dot(long iters) { return krn_cpu_get()->avx512_bf16 ? bench_peak_bf16dot_avx512(iters) : 0; }

float bench_stream_sum(const float *p, size_t n)
{
    switch (isa()) {
    case 2: return bench_stream_sum_avx512(p, n);
    case 1: return bench_stream_sum_avx2(p, n);
    default: {
        float s[16] = {0};
        for (size_t i = 0; i < n; i += 16)
            for (int l = 0; l < 16; l++) s[l] += p[i + l];
        float t = 0;
        for (int l = 0; l < 16; l++) t += s[l];
        return t;
    }
    }
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
