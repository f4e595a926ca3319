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

/* ---- greedy screening (krn_linear_argmax) --------------------------------------------------------------- */

void krn__round_bf16_pairs_avx512(const float *x, size_t ldx, int m, int k, uint32_t *dst, size_t ldd)
{
    round_rows(x, ldx, m, k, dst, ldd);
}

/* Two panels side by side for up to 4 rows, one vdpbf16ps chain per accumulator over all kp pairs: C, C2 = A .
 * panel B / B2 (the approximate products of the screen; their order of summation is not promised). */
KRN_INLINE void ukr2(const int mr, const int kp, const uint32_t *A, const size_t lda, const krn_bf16 *B,
                     const krn_bf16 *B2, float *C, float *C2, const size_t ldc, const __mmask16 m0, const __mmask16 m1,
                     const __mmask16 n0, const __mmask16 n1)
{
    __m512 c0[4], c1[4], e0[4], e1[4];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) c0[i] = c1[i] = e0[i] = e1[i] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(B + (size_t)p * 64);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(B + (size_t)p * 64 + 32);
        const __m512bh g0 = (__m512bh)_mm512_load_si512(B2 + (size_t)p * 64);
        const __m512bh g1 = (__m512bh)_mm512_load_si512(B2 + (size_t)p * 64 + 32);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[i * lda + p]);
            c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
            e0[i] = _mm512_dpbf16_ps(e0[i], a, g0);
            e1[i] = _mm512_dpbf16_ps(e1[i], a, g1);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
        krn__store_row32(C + i * ldc, c0[i], c1[i], m0, m1, 0);
        krn__store_row32(C2 + i * ldc, e0[i], e1[i], n0, n1, 0);
    }
}

static void ukr2_any(int mr, int kp, const uint32_t *A, size_t lda, const krn_bf16 *B, const krn_bf16 *B2, float *C,
                     float *C2, size_t ldc, __mmask16 m0, __mmask16 m1, __mmask16 n0, __mmask16 n1)
{
    switch (mr) {
#define CASE(n) case n: ukr2(n, kp, A, lda, B, B2, C, C2, ldc, m0, m1, n0, n1); break;
    CASE(1) CASE(2) CASE(3) CASE(4)
#undef CASE
    }
}

/* Decode-shaped products over x already rounded to bf16 pairs (xb: m rows of ldxb pairs), for the screen: each
 * 32-output panel is walked once, front to back (up to 4 rows: two panels side by side; more rows: per KC chunk,
 * all row tiles while the chunk is in L1). */
void krn__gemm_bf16dot_rows_avx512(const krn_mat *w, const uint32_t *xb, size_t ldxb, int m, float *y, int ldy,
                                   int nb0, int nb1)
{
    const int K = w->cols, kp = (K + 1) / 2;
    const krn_bf16 *P = w->packed;
    int nb = nb0;
    for (; m <= 4 && nb + 1 < nb1; nb += 2) {
        const krn_bf16 *panel = P + (size_t)nb * kp * 64;
        const int nv = PD_MIN(KRN_NR, w->rows - nb * KRN_NR), nv2 = PD_MIN(KRN_NR, w->rows - (nb + 1) * KRN_NR);
        ukr2_any(m, kp, xb, ldxb, panel, panel + (size_t)kp * 64, y + (size_t)nb * KRN_NR,
                 y + (size_t)(nb + 1) * KRN_NR, (size_t)ldy, krn__mask16(nv), krn__mask16(nv - 16), krn__mask16(nv2),
                 krn__mask16(nv2 - 16));
    }
    const int tiles = (m + MR - 1) / MR, tr = (m + tiles - 1) / tiles;
    for (; nb < nb1; nb++) {
        const krn_bf16 *panel = P + (size_t)nb * kp * 64;
        const int nv = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
        const __mmask16 m0 = krn__mask16(nv), m1 = krn__mask16(nv - 16);
        for (int kc0 = 0; kc0 < K; kc0 += KC) {
            const int kcp = (PD_MIN(KC, K - kc0) + 1) / 2;
            for (int i0 = 0; i0 < m; i0 += tr)
                ukr_any(PD_MIN(tr, m - i0), kcp, xb + (size_t)i0 * ldxb + kc0 / 2, ldxb, panel + (size_t)kc0 / 2 * 64,
                        y + (size_t)i0 * ldy + (size_t)nb * KRN_NR, (size_t)ldy, m0, m1, kc0 > 0);
        }
    }
}

/* The screen of one row: with b_o = cx * wn[o] + a0, tau = max_o (a[o] - b_o); writes to cand (ascending) every o
 * with a[o] + b_o >= tau. Returns their number, or -1 when there are more than cap or tau is not finite. */
int krn__screen_avx512(const float *a, const float *wn, int n, float cx, float a0, int32_t *cand, int cap)
{
    const __m512 vc = _mm512_set1_ps(cx), va = _mm512_set1_ps(a0);
    const __m512 inf = _mm512_set1_ps(INFINITY);
    __m512 tv = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (int o = 0; o < n; o += 16) {
        const __mmask16 k = krn__mask16(n - o);
        const __m512 av = _mm512_maskz_loadu_ps(k, a + o);
        const __m512 b = _mm512_fmadd_ps(vc, _mm512_maskz_loadu_ps(k, wn + o), va);
        bad |= _mm512_mask_cmp_ps_mask(k, _mm512_abs_ps(av), inf, _CMP_NLT_UQ); /* inf or NaN */
        tv = _mm512_mask_max_ps(tv, k, tv, _mm512_sub_ps(av, b));
    }
    const float tau = _mm512_reduce_max_ps(tv);
    if (bad || !isfinite(tau)) return -1;
    const __m512 vt = _mm512_set1_ps(tau);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int nc = 0;
    for (int o = 0; o < n; o += 16, idx = _mm512_add_epi32(idx, step)) {
        const __mmask16 k = krn__mask16(n - o);
        const __m512 b = _mm512_fmadd_ps(vc, _mm512_maskz_loadu_ps(k, wn + o), va);
        const __mmask16 hit =
            _mm512_mask_cmp_ps_mask(k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, a + o), b), vt, _CMP_GE_OQ);
        if (!hit) continue;
        const int c = __builtin_popcount(hit);
        if (nc + c > cap) return -1;
        _mm512_mask_compressstoreu_epi32(cand + nc, hit, idx);
        nc += c;
    }
    return nc;
}
