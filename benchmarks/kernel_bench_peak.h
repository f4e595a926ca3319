/* Machine loops and the median shared by kernel_bench and spec_bench (kernel_bench_peak.c). */
#ifndef PD_KERNEL_BENCH_PEAK_H
#define PD_KERNEL_BENCH_PEAK_H
#include <stddef.h>

/* (iters / 2) * 768 flops of register-resident multiply-adds with the kernel table's own instructions */
float bench_peak_fma(long iters);
/* iters * 768 flops of vdpbf16ps (AVX512-BF16); 0 without it */
float bench_peak_bf16dot(long iters);
/* the sum of n floats (n a multiple of 128, p 64-byte aligned): a streaming read */
float bench_stream_sum(const float *p, size_t n);
/* which loop bench_peak_fma runs, for the report */
const char *bench_peak_isa(void);
/* the median of n > 0 values (sorts v in place) */
double bench_median(double *v, int n);
#endif
