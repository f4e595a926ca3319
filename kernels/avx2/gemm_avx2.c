/* AVX2 + FMA kernels for CPUs without AVX-512 (most laptops and desktops, older servers): the packed BF16 and FP8
 * GEMM/GEMV and the F32 GEMV. They read the same packed layouts as the AVX-512 kernels (KRN_PACK_BF16_N32K2,
 * KRN_PACK_F8_N32K1), with 8-lane vectors: tiles of 2 rows x one 32-output panel (4 vectors a row), one BF16 row
 * two panels side by side, so that 8 FMA chains are in flight; the KC chunk (16 KB of BF16) stays in L1 while the
 * tiles of a block of rows pass over it. (Tiles of 4 rows over half panels, read every other line, took 24-30 ms
 * for 4 rows of a 129280 x 1024 head in one probe, against 14-16 ms this way and 8.5 ms for 1 row.)
 * Numerics are the AVX-512 kernels' own: every output of the packed kernels is one FMA chain per KC-value chunk,
 * k in order (for BF16: w[k] of the pair, then w[k+1]), chunks added to y in k order, so the BF16 and FP8 results
 * are bit for bit those of the AVX-512 table and never depend on m (decode, verify and prompt rows agree). The F32
 * GEMV sums each output in 8 lanes over k, then the lanes in one fixed order: its bits do not depend on m either
 * (they differ from the 16-lane AVX-512 GEMV's). */
#include <immintrin.h>

#include "kernels/krn_impl.h"

#define AVX2_INLINE static inline __attribute__((always_inline))

#define KC 256     /* even; the summation chunk of every output (as on AVX-512) */
#define MC 144     /* rows per block of x kept in L2 for many rows (prefill) */
#define MSMALL 16  /* up to this many rows: panel-major order, one pass over the weights */

/* 16 outputs (c: y of the first one) (+)= v0 | v1; only the first nvalid are stored (a panel's last rows). */
AVX2_INLINE void store16(float *c, __m256 v0, __m256 v1, int nvalid, int add)
{
    if (nvalid >= 16) {
        if (add) {
            v0 = _mm256_add_ps(_mm256_loadu_ps(c), v0);
            v1 = _mm256_add_ps(_mm256_loadu_ps(c + 8), v1);
        }
        _mm256_storeu_ps(c, v0);
        _mm256_storeu_ps(c + 8, v1);
        return;
    }
    float t[16];
    _mm256_storeu_ps(t, v0);
    _mm256_storeu_ps(t + 8, v1);
    for (int i = 0; i < nvalid; i++) c[i] = add ? c[i] + t[i] : t[i];
}

/* ---- BF16 (KRN_PACK_BF16_N32K2) --------------------------------------------------------------------------- */

/* C[mr, 32 * np] (+)= A[mr, kc] . panels B + q * pstride (per k-pair: 32 outputs x 2 bf16 at + p*64), mr * np <= 2:
 * 8 FMA chains in flight, which one row needs to keep up with memory; nv[q] outputs of panel q kept. Per output one
 * FMA chain, k in order: w[k] of the pair, then w[k+1]. */
AVX2_INLINE void ukr_bf16_full(const int mr, const int np, const int kc, const float *A, const size_t lda,
                               const krn_bf16 *B, const size_t pstride, float *C, const size_t ldc, const int *nv,
                               const int load_c)
{
    __m256 c[2][2][4];
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 2
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int q = 0; q < np; q++)
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) c[i][q][v] = _mm256_setzero_ps();
    const int kp = kc / 2;
    for (int p = 0; p < kp; p++) {
        __m256 a0[2], a1[2];
#pragma GCC unroll 2
        for (int i = 0; i < mr; i++) {
            a0[i] = _mm256_broadcast_ss(A + i * lda + 2 * p);
            a1[i] = _mm256_broadcast_ss(A + i * lda + 2 * p + 1);
        }
#pragma GCC unroll 2
        for (int q = 0; q < np; q++)
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256i b = _mm256_load_si256((const __m256i *)(B + q * pstride + (size_t)p * 64 + v * 16));
                const __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
                const __m256 o = _mm256_castsi256_ps(_mm256_and_si256(b, hi));
#pragma GCC unroll 2
                for (int i = 0; i < mr; i++) {
                    c[i][q][v] = _mm256_fmadd_ps(a0[i], e, c[i][q][v]);
                    c[i][q][v] = _mm256_fmadd_ps(a1[i], o, c[i][q][v]);
                }
            }
    }
    if (kc & 1) {
#pragma GCC unroll 2
        for (int q = 0; q < np; q++)
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256i b = _mm256_load_si256((const __m256i *)(B + q * pstride + (size_t)kp * 64 + v * 16));
                const __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
#pragma GCC unroll 2
                for (int i = 0; i < mr; i++)
                    c[i][q][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + i * lda + 2 * kp), e, c[i][q][v]);
            }
    }
#pragma GCC unroll 2
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int q = 0; q < np; q++) {
            store16(C + i * ldc + q * KRN_NR, c[i][q][0], c[i][q][1], nv[q], load_c);
            store16(C + i * ldc + q * KRN_NR + 16, c[i][q][2], c[i][q][3], nv[q] - 16, load_c);
        }
}

/* One KC chunk of panel nb for rows [i0, i1) of x, in tiles of 2 rows (the chunk, 16 KB, stays in L1 across them). */
static void chunk_bf16(const krn_mat *w, const float *x, int i0, int i1, float *y, int ldy, int nb, int kc0)
{
    const int K = w->cols, kp = (K + 1) / 2, kc = PD_MIN(KC, K - kc0);
    const krn_bf16 *panel = (const krn_bf16 *)w->packed + ((size_t)nb * kp + (size_t)kc0 / 2) * 64;
    const int nv = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
    int r = i0;
    for (; r + 1 < i1; r += 2)
        ukr_bf16_full(2, 1, kc, x + (size_t)r * K + kc0, (size_t)K, panel, 0, y + (size_t)r * ldy + (size_t)nb * KRN_NR,
                      (size_t)ldy, &nv, kc0 > 0);
    if (r < i1)
        ukr_bf16_full(1, 1, kc, x + (size_t)r * K + kc0, (size_t)K, panel, 0, y + (size_t)r * ldy + (size_t)nb * KRN_NR,
                      (size_t)ldy, &nv, kc0 > 0);
}

void krn__gemm_bf16_avx2_2x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1)
{
    const int K = w->cols, kp = (K + 1) / 2;
    if (m <= MSMALL) { /* decode: each panel once, front to back; one row walks two panels side by side */
        int nb = nb0;
        for (; m == 1 && nb + 1 < nb1; nb += 2) {
            const krn_bf16 *panel = (const krn_bf16 *)w->packed + (size_t)nb * kp * 64;
            const int nv[2] = {PD_MIN(KRN_NR, w->rows - nb * KRN_NR), PD_MIN(KRN_NR, w->rows - (nb + 1) * KRN_NR)};
            for (int kc0 = 0; kc0 < K; kc0 += KC)
                ukr_bf16_full(1, 2, PD_MIN(KC, K - kc0), x + kc0, (size_t)K, panel + (size_t)kc0 / 2 * 64,
                              (size_t)kp * 64, y + (size_t)nb * KRN_NR, (size_t)ldy, nv, kc0 > 0);
        }
        for (; nb < nb1; nb++)
            for (int kc0 = 0; kc0 < K; kc0 += KC) chunk_bf16(w, x, 0, m, y, ldy, nb, kc0);
        return;
    }
    for (int mc0 = 0; mc0 < m; mc0 += MC)
        for (int kc0 = 0; kc0 < K; kc0 += KC)
            for (int nb = nb0; nb < nb1; nb++) chunk_bf16(w, x, mc0, PD_MIN(m, mc0 + MC), y, ldy, nb, kc0);
}

/* ---- FP8 e4m3 with block scales (KRN_PACK_F8_N32K1) -------------------------------------------------------- */

/* 8 e4m3 bytes -> their values times the output rows' block scales (which carry 2^120): sign-extend, move the 7
 * exponent/mantissa bits to a float's bits 26..20, keep the sign; exact, as on AVX-512. */
AVX2_INLINE __m256 dec8(const uint8_t *p, __m256 s)
{
    const __m256i v = _mm256_slli_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)), 20);
    return _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0x87f00000u))), s);
}

/* C[mr, 32] (+)= A[mr, k0:k0+kc] . panel B (per k: the 32 outputs' bytes at B + k*32), mr <= 2; S: the panel's
 * scales [kb][32]; nvalid outputs kept. Per output one FMA chain, k in order. */
AVX2_INLINE void ukr_f8_full(const int mr, const int k0, const int kc, const int bc, const float *A, const size_t lda,
                             const uint8_t *B, const float *S, float *C, const size_t ldc, const int nvalid,
                             const int load_c)
{
    __m256 c[2][4];
#pragma GCC unroll 2
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) c[i][v] = _mm256_setzero_ps();
    int k = 0;
    while (k < kc) {
        const int kb = (k0 + k) / bc, kend = PD_MIN(kc, (kb + 1) * bc - k0);
        __m256 sv[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) sv[v] = _mm256_loadu_ps(S + (size_t)kb * 32 + v * 8);
        for (; k + 1 < kend; k += 2) {
            __m256 a0[2], a1[2];
#pragma GCC unroll 2
            for (int i = 0; i < mr; i++) {
                a0[i] = _mm256_broadcast_ss(A + i * lda + k);
                a1[i] = _mm256_broadcast_ss(A + i * lda + k + 1);
            }
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256 w0 = dec8(B + (size_t)k * 32 + v * 8, sv[v]),
                             w1 = dec8(B + (size_t)(k + 1) * 32 + v * 8, sv[v]);
#pragma GCC unroll 2
                for (int i = 0; i < mr; i++) {
                    c[i][v] = _mm256_fmadd_ps(a0[i], w0, c[i][v]);
                    c[i][v] = _mm256_fmadd_ps(a1[i], w1, c[i][v]);
                }
            }
        }
        if (k < kend) {
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256 w0 = dec8(B + (size_t)k * 32 + v * 8, sv[v]);
#pragma GCC unroll 2
                for (int i = 0; i < mr; i++)
                    c[i][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + i * lda + k), w0, c[i][v]);
            }
            k++;
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < mr; i++) {
        store16(C + i * ldc, c[i][0], c[i][1], nvalid, load_c);
        store16(C + i * ldc + 16, c[i][2], c[i][3], nvalid - 16, load_c);
    }
}

static void chunk_f8(const krn_mat *w, const float *x, int i0, int i1, float *y, int ldy, int nb, int kc0)
{
    const int K = w->cols, kc = PD_MIN(KC, K - kc0);
    const uint8_t *panel = (const uint8_t *)w->packed + ((size_t)nb * K + kc0) * KRN_NR;
    const float *S = w->pscale + (size_t)nb * krn__f8_kblocks(w) * KRN_NR;
    const int nv = PD_MIN(KRN_NR, w->rows - nb * KRN_NR);
    int r = i0;
    for (; r + 1 < i1; r += 2)
        ukr_f8_full(2, kc0, kc, w->block_c, x + (size_t)r * K + kc0, (size_t)K, panel, S,
                    y + (size_t)r * ldy + (size_t)nb * KRN_NR, (size_t)ldy, nv, kc0 > 0);
    if (r < i1)
        ukr_f8_full(1, kc0, kc, w->block_c, x + (size_t)r * K + kc0, (size_t)K, panel, S,
                    y + (size_t)r * ldy + (size_t)nb * KRN_NR, (size_t)ldy, nv, kc0 > 0);
}

void krn__gemm_f8_avx2_2x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1)
{
    const int K = w->cols;
    if (m <= MSMALL) {
        for (int nb = nb0; nb < nb1; nb++)
            for (int kc0 = 0; kc0 < K; kc0 += KC) chunk_f8(w, x, 0, m, y, ldy, nb, kc0);
        return;
    }
    for (int mc0 = 0; mc0 < m; mc0 += MC)
        for (int kc0 = 0; kc0 < K; kc0 += KC)
            for (int nb = nb0; nb < nb1; nb++) chunk_f8(w, x, mc0, PD_MIN(m, mc0 + MC), y, ldy, nb, kc0);
}

/* ---- F32 weights, row-major (the router; float32 models) ---------------------------------------------------- */

/* The 8 lanes of v summed in one fixed order. */
AVX2_INLINE float hsum8(__m256 v)
{
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/* y[mr rows][nr outputs] = x . W rows, each one 8-lane FMA chain over k, then hsum8 */
AVX2_INLINE void ukr_f32(const int mr, const int nr, const float *W, const int K, const float *x, float *y,
                         const int ldy)
{
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) acc[i][r] = _mm256_setzero_ps();
    const int K8 = K & ~7;
    for (int k = 0; k < K8; k += 8) {
        __m256 wv[2];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) wv[r] = _mm256_loadu_ps(W + (size_t)r * K + k);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256 xv = _mm256_loadu_ps(x + (size_t)i * K + k);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    if (K8 < K) { /* the tail, zero-filled lanes (0 * 0 adds +0 to a lane, leaving its sum as it was) */
        const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(K - K8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 wv[2];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) wv[r] = _mm256_maskload_ps(W + (size_t)r * K + K8, mk);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256 xv = _mm256_maskload_ps(x + (size_t)i * K + K8, mk);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) y[(size_t)i * ldy + r] = hsum8(acc[i][r]);
}

void krn__gemv_f32_avx2_4x8(const krn_mat *w, const float *x, int m, float *y, int ldy, int n0, int n1)
{
    const float *W = w->data;
    const int K = w->cols;
    /* many rows (prefill): blocks of rows that stay in L2 (~256 KB) while the weight rows pass over them */
    const int mb = PD_MAX(4, (int)((256 << 10) / ((size_t)K * sizeof(float))) & ~3);
    for (int b0 = 0; b0 < m; b0 += mb) {
        const int b1 = PD_MIN(m, b0 + mb);
        for (int n = n0; n < n1; n += 2) {
            const int nr = PD_MIN(2, n1 - n);
            for (int i0 = b0; i0 < b1; i0 += 4) {
                const int mr = PD_MIN(4, b1 - i0);
                const float *Wn = W + (size_t)n * K, *xi = x + (size_t)i0 * K;
                float *yi = y + (size_t)i0 * ldy + n;
#define CASE(a, b) if (mr == a && nr == b) { ukr_f32(a, b, Wn, K, xi, yi, ldy); continue; }
                CASE(1, 2) CASE(2, 2) CASE(3, 2) CASE(4, 2) CASE(1, 1) CASE(2, 1) CASE(3, 1) CASE(4, 1)
#undef CASE
            }
        }
    }
}
