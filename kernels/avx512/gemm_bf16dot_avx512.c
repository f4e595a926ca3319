/* BF16-weight GEMM with bf16 activations on AVX512-BF16 (vdpbf16ps), tile up to 12 rows x 32 outputs: the opt-in
 * prompt-prefill kernel (KRN_LINEAR_BF16_ACT). Per KC chunk a block of up to MC rows of x is rounded to bf16 once
 * (round to nearest even, vcvtne2ps2bf16) into row-major k-pairs on the stack; the packed weights
 * (KRN_PACK_BF16_N32K2, per k-pair 32 outputs x 2 bf16) are already vdpbf16ps's other operand, so per k-pair and
 * row one broadcast and two vdpbf16ps do 64 multiply-adds (the f32 kernel needs four FMAs and two conversions).
 * Summation order per output is fixed whatever m and wherever its row falls in a tile: one vdpbf16ps chain per KC
 * chunk, k-pairs in order, chunks added to y in k order. So a row gives the same bits whatever the row count and
 * the chunking of a prompt. It is NOT the exact kernel's result: decode and verify passes never come here. */
#include "kernels/avx512/avx512_util.h"

#define MR 12
#define KC 256    /* even; the summation chunk of every output */
#define MC 144    /* rows of x rounded per chunk (~76 KB of bf16 on the stack, stays in L2) */
#define LDA (KC / 2 + 16) /* pairs per row of the rounded block: padded by a cache line so that a tile's 12 rows
                           * do not share L1 sets */

/* C[mr, 32] (+)= A[mr, 2*kp] . B-panel[kp pairs][32][2]; A: bf16 pairs as uint32, row stride lda pairs */
KRN_INLINE void ukr(const int mr, const int kp, const uint32_t *A, const size_t lda, const krn_bf16 *B, float *C,
                    const size_t ldc, const __mmask16 m0, const __mmask16 m1, const int load_c)
{
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(B + (size_t)p * 64);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(B + (size_t)p * 64 + 32);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[i * lda + p]);
            c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) krn__store_row32(C + i * ldc, c0[i], c1[i], m0, m1, load_c);
}

static void ukr_any(int mr, int kp, const uint32_t *A, size_t lda, const krn_bf16 *B, float *C, size_t ldc,
                    __mmask16 m0, __mmask16 m1, int load_c)
{
    switch (mr) {
#define CASE(n) case n: ukr(n, kp, A, lda, B, C, ldc, m0, m1, load_c); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
    }
}

/* Rounds x[r, kc0 .. kc0+kc) of rows [0, mr) to bf16 pairs: dst[r * ldd + p] = (bf16(x[2p]) | bf16(x[2p+1]) << 16)
 * relative to kc0; an odd kc gets a zero partner (the packed weights are zero there too). */
static void round_rows(const float *x, size_t ldx, int mr, int kc, uint32_t *dst, size_t ldd)
{
    for (int r = 0; r < mr; r++) {
        const float *s = x + (size_t)r * ldx;
        uint32_t *d = dst + (size_t)r * ldd;
        int k = 0;
        for (; k + 32 <= kc; k += 32) {
            const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + k + 16), _mm512_loadu_ps(s + k));
            _mm512_storeu_si512(d + k / 2, (__m512i)v);
        }
        if (k < kc) {
            const int n = kc - k;
            const __m512 lo = _mm512_maskz_loadu_ps(krn__mask16(n), s + k);
            const __m512 hi = _mm512_maskz_loadu_ps(krn__mask16(n - 16), s + k + 16);
            const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_mask_storeu_epi32(d + k / 2, krn__mask16((n + 1) / 2), (__m512i)v);
        }
    }
}

void krn__gemm_bf16dot_avx512_12x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1)
{
    const int K = w->cols, kp = (K + 1) / 2;
    const krn_bf16 *P = w->packed;
    uint32_t abuf[MC * LDA] __attribute__((aligned(64)));
    for (int mc0 = 0; mc0 < m; mc0 += MC) {
        const int mc = PD_MIN(MC, m - mc0);
        for (int kc0 = 0; kc0 < K; kc0 += KC) {
            const int kc = PD_MIN(KC, K - kc0), kcp = (kc + 1) / 2;
            round_rows(x + (size_t)mc0 * K + kc0, (size_t)K, mc, kc, abuf, LDA);
            for (int nb = nb0; nb < nb1; nb++) {
                const krn_bf16 *panel = P + ((size_t)nb * kp + (size_t)kc0 / 2) * 64;
                const int nvalid = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
                const __mmask16 m0 = krn__mask16(nvalid), m1 = krn__mask16(nvalid - 16);
                for (int i0 = 0; i0 < mc; i0 += MR)
                    ukr_any(PD_MIN(MR, mc - i0), kcp, abuf + (size_t)i0 * LDA, LDA, panel,
                            y + (size_t)(mc0 + i0) * ldy + (size_t)nb * KRN_NR, (size_t)ldy, m0, m1, kc0 > 0);
            }
        }
    }
}
