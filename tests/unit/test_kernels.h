/* What the two source files of the test_kernels executable share: the random source every test draws from (seeded
 * once in main, so each forked test starts from the same state), the float64 reference linear layer, and the
 * "paths" case that test_kernels_paths.c defines. */
#ifndef TEST_KERNELS_H
#define TEST_KERNELS_H

#include <check.h>

#include "kernels/krn.h"

extern pd_rng g_kernels_rng;

static inline float randn(void) { return (float)pd_rng_normal(&g_kernels_rng); }

/* y = x W^T in double, with W given as float rows: x [m, k], W [n, k], y [m, n] */
void ref_linear(const float *x, const float *W, int m, int n, int k, double *y);

/* Adds the "paths" case (every kernel table, 300 s timeout) to s and returns it. */
TCase *test_kernels_paths_case(Suite *s);

#endif
