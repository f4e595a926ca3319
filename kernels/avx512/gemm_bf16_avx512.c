/* BF16-weight GEMM/GEMV on AVX-512, tile up to 12 rows x 32 outputs. Weights come packed (KRN_PACK_BF16_N32K2: per
 * k-pair, 32 outputs x 2 bf16 = one 32-bit lane per output), activations stay float32. A lane shifted left by
 * 16 is w[k] as f32, the lane masked to its high half is w[k+1]: two cheap ops turn 16 packed pairs into two
 * f32 vectors, then FMAs. Exact weights, f32 activations, f32 accumulation (see docs/kernels.md for why not
 * vdpbf16ps).
 * Every output is summed the same way whatever the row count m and wherever its row falls in a tile: one FMA
 * chain per KC-value chunk, k in order, chunks added to y in k order. So a row gives the same bits alone, in a
 * decode batch or in a verify pass of k+1 positions (speculative decoding stays exactly lossless).
 * Order of work: decode (m <= MSMALL) walks each 32-output panel once, front to back, all rows per KC chunk
 * while the chunk (16 KB) is in L1: one streaming pass over the weights for any m up to 16; up to 4 rows walk
 * two panels side by side (more FMA chains in flight, two prefetch streams). Prefill blocks KC
 * values x 32 outputs in L1 against MC rows of x in L2. */
#include "kernels/avx512/avx512_util.h"

#define MR 12
#define KC 256     /* even; the summation chunk of every output (see above) */
#define MC 144     /* multiple of MR */
#define MSMALL 16  /* up to this many rows: panel-major order, one pass over the weights */

/* C[mr, 32] (+)= A[mr, kc] . B-panel[kc/2 pairs][32][2]; one FMA chain per accumulator, k in order */
KRN_INLINE void ukr(const int mr, const int kc, const float *A, const size_t lda, const krn_bf16 *B, float *C,
                    const size_t ldc, const __mmask16 m0, const __mmask16 m1, const int load_c)
{
    __m512 c0[MR], c1[MR];
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    const int kp = kc / 2;
    for (int p = 0; p < kp; p++) {
        const __m512i b0 = _mm512_load_si512(B + (size_t)p * 64), b1 = _mm512_load_si512(B + (size_t)p * 64 + 32);
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(b0, 16));
        const __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(b1, 16));
        const __m512 o0 = _mm512_castsi512_ps(_mm512_and_si512(b0, hi));
        const __m512 o1 = _mm512_castsi512_ps(_mm512_and_si512(b1, hi));
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            const __m512 a0 = _mm512_set1_ps(A[i * lda + 2 * p]), a1 = _mm512_set1_ps(A[i * lda + 2 * p + 1]);
            c0[i] = _mm512_fmadd_ps(a0, e0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a0, e1, c1[i]);
            c0[i] = _mm512_fmadd_ps(a1, o0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a1, o1, c1[i]);
        }
    }
    if (kc & 1) { /* last k of an odd K: its pair partner is zero padding, and A has no element there */
        const __m512i b0 = _mm512_load_si512(B + (size_t)kp * 64), b1 = _mm512_load_si512(B + (size_t)kp * 64 + 32);
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(b0, 16));
        const __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(b1, 16));
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            const __m512 a0 = _mm512_set1_ps(A[i * lda + 2 * kp]);
            c0[i] = _mm512_fmadd_ps(a0, e0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a0, e1, c1[i]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) krn__store_row32(C + i * ldc, c0[i], c1[i], m0, m1, load_c);
}

/* Two panels at once for up to 4 rows (decode): C and C2 (+)= A . panel B / panel B2. The same chain per output as
 * ukr (the order of each sum is unchanged); two independent panels give twice the FMA chains to hide latency
 * and two streams for the prefetchers (m = 1 reached ~0.85 of the streaming read with one panel, ~1.0 with two,
 * measured in one run). */
KRN_INLINE void ukr2(const int mr, const int kc, const float *A, const size_t lda, const krn_bf16 *B,
                     const krn_bf16 *B2, float *C, float *C2, const size_t ldc, const __mmask16 m0, const __mmask16 m1,
                     const __mmask16 n0, const __mmask16 n1, const int load_c)
{
    __m512 c0[4], c1[4], e0[4], e1[4];
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) c0[i] = c1[i] = e0[i] = e1[i] = _mm512_setzero_ps();
    const int kp = kc / 2;
    for (int p = 0; p < kp; p++) {
        const __m512i b0 = _mm512_load_si512(B + (size_t)p * 64), b1 = _mm512_load_si512(B + (size_t)p * 64 + 32);
        const __m512i g0 = _mm512_load_si512(B2 + (size_t)p * 64), g1 = _mm512_load_si512(B2 + (size_t)p * 64 + 32);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m512 a0 = _mm512_set1_ps(A[i * lda + 2 * p]), a1 = _mm512_set1_ps(A[i * lda + 2 * p + 1]);
            c0[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(b0, 16)), c0[i]);
            c1[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(b1, 16)), c1[i]);
            e0[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(g0, 16)), e0[i]);
            e1[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(g1, 16)), e1[i]);
            c0[i] = _mm512_fmadd_ps(a1, _mm512_castsi512_ps(_mm512_and_si512(b0, hi)), c0[i]);
            c1[i] = _mm512_fmadd_ps(a1, _mm512_castsi512_ps(_mm512_and_si512(b1, hi)), c1[i]);
            e0[i] = _mm512_fmadd_ps(a1, _mm512_castsi512_ps(_mm512_and_si512(g0, hi)), e0[i]);
            e1[i] = _mm512_fmadd_ps(a1, _mm512_castsi512_ps(_mm512_and_si512(g1, hi)), e1[i]);
        }
    }
    if (kc & 1) {
        const __m512i b0 = _mm512_load_si512(B + (size_t)kp * 64), b1 = _mm512_load_si512(B + (size_t)kp * 64 + 32);
        const __m512i g0 = _mm512_load_si512(B2 + (size_t)kp * 64), g1 = _mm512_load_si512(B2 + (size_t)kp * 64 + 32);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m512 a0 = _mm512_set1_ps(A[i * lda + 2 * kp]);
            c0[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(b0, 16)), c0[i]);
            c1[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(b1, 16)), c1[i]);
            e0[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(g0, 16)), e0[i]);
            e1[i] = _mm512_fmadd_ps(a0, _mm512_castsi512_ps(_mm512_slli_epi32(g1, 16)), e1[i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
        krn__store_row32(C + i * ldc, c0[i], c1[i], m0, m1, load_c);
        krn__store_row32(C2 + i * ldc, e0[i], e1[i], n0, n1, load_c);
    }
}

static void ukr2_any(int mr, int kc, const float *A, size_t lda, const krn_bf16 *B, const krn_bf16 *B2, float *C,
                     float *C2, size_t ldc, __mmask16 m0, __mmask16 m1, __mmask16 n0, __mmask16 n1, int load_c)
{
    switch (mr) {
#define CASE(n) case n: ukr2(n, kc, A, lda, B, B2, C, C2, ldc, m0, m1, n0, n1, load_c); break;
    CASE(1) CASE(2) CASE(3) CASE(4)
#undef CASE
    }
}

static void ukr_any(int mr, int kc, const float *A, size_t lda, const krn_bf16 *B, float *C, size_t ldc,
                    __mmask16 m0, __mmask16 m1, int load_c)
{
    switch (mr) {
#define CASE(n) case n: ukr(n, kc, A, lda, B, C, ldc, m0, m1, load_c); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
    }
}

void krn__gemm_bf16_avx512_12x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1)
{
    const int K = w->cols, kp = (K + 1) / 2;
    const krn_bf16 *P = w->packed;
    if (m <= MSMALL) {
        /* rows in ceil(m / MR) tiles of near-equal size (13..16 rows: two of 7..8, not 12 + 1..4) */
        const int tiles = (m + MR - 1) / MR, tr = (m + tiles - 1) / tiles;
        int nb = nb0;
        for (; m <= 4 && nb + 1 < nb1; nb += 2) { /* decode: two panels side by side */
            const krn_bf16 *panel = P + (size_t)nb * kp * 64, *panel2 = panel + (size_t)kp * 64;
            const int nv = PD_MIN(KRN_NR, w->rows - nb * KRN_NR), nv2 = PD_MIN(KRN_NR, w->rows - (nb + 1) * KRN_NR);
            const __mmask16 m0 = krn__mask16(nv), m1 = krn__mask16(nv - 16);
            const __mmask16 n0 = krn__mask16(nv2), n1 = krn__mask16(nv2 - 16);
            for (int kc0 = 0; kc0 < K; kc0 += KC) {
                const int kc = PD_MIN(KC, K - kc0);
                float *yb = y + (size_t)nb * KRN_NR;
                ukr2_any(m, kc, x + kc0, (size_t)K, panel + (size_t)kc0 / 2 * 64, panel2 + (size_t)kc0 / 2 * 64, yb,
                         yb + KRN_NR, (size_t)ldy, m0, m1, n0, n1, kc0 > 0);
            }
        }
        for (; nb < nb1; nb++) {
            const krn_bf16 *panel = P + (size_t)nb * kp * 64;
            const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
            const __mmask16 m0 = krn__mask16(nvalid), m1 = krn__mask16(nvalid - 16);
            for (int kc0 = 0; kc0 < K; kc0 += KC) {
                const int kc = PD_MIN(KC, K - kc0);
                for (int i0 = 0; i0 < m; i0 += tr)
                    ukr_any(PD_MIN(tr, m - i0), kc, x + (size_t)i0 * K + kc0, (size_t)K, panel + (size_t)kc0 / 2 * 64,
                            y + (size_t)i0 * ldy + (size_t)nb * KRN_NR, (size_t)ldy, m0, m1, kc0 > 0);
            }
        }
        return;
    }
    for (int mc0 = 0; mc0 < m; mc0 += MC) {
        const int mc1 = PD_MIN(m, mc0 + MC);
        for (int kc0 = 0; kc0 < K; kc0 += KC) {
            const int kc = PD_MIN(KC, K - kc0);
            for (int nb = nb0; nb < nb1; nb++) {
                const krn_bf16 *panel = P + ((size_t)nb * kp + (size_t)kc0 / 2) * 64;
                const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
                const __mmask16 m0 = krn__mask16(nvalid), m1 = krn__mask16(nvalid - 16);
                for (int i0 = mc0; i0 < mc1; i0 += MR)
                    ukr_any(PD_MIN(MR, mc1 - i0), kc, x + (size_t)i0 * K + kc0, (size_t)K, panel,
                            y + (size_t)i0 * ldy + (size_t)nb * KRN_NR, (size_t)ldy, m0, m1, kc0 > 0);
            }
        }
    }
}
