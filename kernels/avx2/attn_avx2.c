/* The attention tile and MLA's two absorbed decode products on AVX2 + FMA, for CPUs without AVX-512. They are the
 * AVX-512 kernels (kernels/avx512/attn_avx512.c, mla_avx512.c) with 8-lane vectors, and give their bits:
 *  - attention: blocks of 8 units (query, head) that read the same keys, one lane each; per unit the scores are one
 *    FMA chain over d in order, the same vector exp (2^n applied in two exact halves: one rounding, as vscalefps),
 *    the same online-softmax updates and P.V chains over the keys in order. Lanes never mix, so a unit's result does
 *    not depend on its block, its pass or the lane width: the AVX-512 table's bits, and a row alone equals the row
 *    in a verify pass;
 *  - krn_matmul_sub (q_nope into the latent space): per output one FMA chain over d in order, as on AVX-512;
 *  - krn_linear_rows (latent back to v): per output 16 partial sums over 16-column steps (two 8-lane halves) added in
 *    the order GCC's _mm512_reduce_add_ps adds the AVX-512 kernel's 16 lanes.
 * Weight rows convert in registers for BF16, F32 and FP8 within one scale block; others (and tails) go through
 * krn_mat_row_part, whose values are the same. */
#include <immintrin.h>
#include <math.h>

#include "kernels/krn_impl.h"

#define AVX2_INLINE static inline __attribute__((always_inline))

#define QB 8        /* units per block: the lanes */
#define CHUNK 64    /* keys per online-softmax step */
#define NJ 8        /* keys scored at once */
#define QG 4        /* units per group in P.V */
#define DVB 2       /* value vectors (16 floats) per P.V pass */
#define DMAX 1024   /* da + db handled here; larger heads take the reference kernel */

/* lanes [0, n) of 8 as an all-ones mask (n may be <= 0 or >= 8) */
AVX2_INLINE __m256i mask8(int n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

/* exp(x) as krn__exp512: clamp, n = round(x log2 e), two-part reduction, the same polynomial, then p * 2^n. 2^n is
 * applied as 2^(n >> 1) (exact: p stays a normal float) then 2^(n - (n >> 1)) (one rounding, into subnormals
 * gradually): vscalefps's result. */
AVX2_INLINE __m256 exp256(__m256 x)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2hi = _mm256_set1_ps(0.693359375f), ln2lo = _mm256_set1_ps(-2.12194440e-4f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-103.0f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2hi, x);
    r = _mm256_fnmadd_ps(n, ln2lo, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23)));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23)));
}

/* Scores of keys [j0, j0 + nj) for the block's lanes into S[j][8], scaled, -inf where a lane may not see the key;
 * returns the lane-wise max. */
AVX2_INLINE __m256 block_scores(const krn_attn_tile_args *a, const float *Qt, int h, int j0, int nj, __m256i lim,
                                float *S)
{
    const int da = a->da, db = a->db;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    const __m256 scale = _mm256_set1_ps(a->scale), ninf = _mm256_set1_ps(-INFINITY);
    for (int jb = 0; jb < nj; jb += NJ) {
        const float *ka[NJ], *kb[NJ];
        for (int t = 0; t < NJ; t++) { /* keys past the chunk read the first one's row; their lanes are masked */
            const int j = j0 + (jb + t < nj ? jb + t : 0);
            ka[t] = a->ka + (size_t)j * a->ka_stride + (size_t)h * a->ka_hstride;
            kb[t] = a->kb + (size_t)j * a->kb_stride;
        }
        __m256 s[NJ];
#pragma GCC unroll 8
        for (int t = 0; t < NJ; t++) s[t] = _mm256_setzero_ps();
        for (int d = 0; d < da; d++) {
            const __m256 q = _mm256_load_ps(Qt + (size_t)d * QB);
#pragma GCC unroll 8
            for (int t = 0; t < NJ; t++) s[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(ka[t] + d), q, s[t]);
        }
        for (int d = 0; d < db; d++) {
            const __m256 q = _mm256_load_ps(Qt + (size_t)(da + d) * QB);
#pragma GCC unroll 8
            for (int t = 0; t < NJ; t++) s[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(kb[t] + d), q, s[t]);
        }
#pragma GCC unroll 8
        for (int t = 0; t < NJ; t++) {
            if (jb + t >= nj) break;
            /* lane k sees key j0 + jb + t when it is below the lane's key count */
            const __m256i ok = _mm256_cmpgt_epi32(lim, _mm256_set1_epi32(j0 + jb + t));
            const __m256 v = _mm256_blendv_ps(ninf, _mm256_mul_ps(s[t], scale), _mm256_castsi256_ps(ok));
            _mm256_store_ps(S + (size_t)(jb + t) * QB, v);
            mx = _mm256_max_ps(mx, v);
        }
    }
    return mx;
}

/* acc[unit] = acc * corr + sum_j P[j][lane] v[j] for the block's units, values [0, dv). */
static void block_pv(const krn_attn_tile_args *a, const krn__attn_block *b, int j0, int nj, const float *P,
                     const float *corr)
{
    const int dv = a->dv, h = b->h[0];
    for (int d0 = 0; d0 < dv; d0 += DVB * 8) {
        __m256i km[DVB];
#pragma GCC unroll 2
        for (int t = 0; t < DVB; t++) km[t] = mask8(dv - d0 - 8 * t);
        for (int g0 = 0; g0 < b->n; g0 += QG) {
            const int ng = PD_MIN(QG, b->n - g0);
            __m256 r[QG][DVB];
            float *acc[QG];
#pragma GCC unroll 4
            for (int k = 0; k < QG; k++) {
                const int kk = k < ng ? g0 + k : g0; /* spare accumulators mirror the first unit, never stored */
                acc[k] = a->acc + (size_t)b->i[kk] * a->acc_stride + (size_t)b->h[kk] * a->acc_hstride + d0;
                const __m256 c = _mm256_set1_ps(corr[kk]);
#pragma GCC unroll 2
                for (int t = 0; t < DVB; t++) r[k][t] = _mm256_mul_ps(_mm256_maskload_ps(acc[k] + 8 * t, km[t]), c);
            }
            for (int j = 0; j < nj; j++) {
                const float *v = a->v + (size_t)(j0 + j) * a->v_stride + (size_t)h * a->v_hstride + d0;
                __m256 vv[DVB];
#pragma GCC unroll 2
                for (int t = 0; t < DVB; t++) vv[t] = _mm256_maskload_ps(v + 8 * t, km[t]);
                const float *p = P + (size_t)j * QB + g0;
#pragma GCC unroll 4
                for (int k = 0; k < QG; k++) {
                    const __m256 pk = _mm256_broadcast_ss(p + (k < ng ? k : 0));
#pragma GCC unroll 2
                    for (int t = 0; t < DVB; t++) r[k][t] = _mm256_fmadd_ps(pk, vv[t], r[k][t]);
                }
            }
            for (int k = 0; k < ng; k++)
#pragma GCC unroll 2
                for (int t = 0; t < DVB; t++) _mm256_maskstore_ps(acc[k] + 8 * t, km[t], r[k][t]);
        }
    }
}

static void run_block(const krn_attn_tile_args *a, const krn__attn_block *b, float *Qt, float *S)
{
    const int da = a->da, db = a->db, h = b->h[0];
    int lim_a[QB] __attribute__((aligned(32)));
    float mv[QB] __attribute__((aligned(32))), lv[QB] __attribute__((aligned(32)));
    int nkmax = 0;
    for (int k = 0; k < QB; k++) {
        int nk = 0;
        if (k < b->n) {
            nk = PD_MIN(a->nk, a->q_limit[b->i[k]] - a->k_pos0 + 1);
            nk = PD_MAX(nk, 0);
            const float *qa = a->qa + (size_t)b->i[k] * a->qa_stride + (size_t)b->h[k] * a->qa_hstride;
            const float *qb = a->qb + (size_t)b->i[k] * a->qb_stride + (size_t)b->h[k] * a->qb_hstride;
            for (int d = 0; d < da; d++) Qt[(size_t)d * QB + k] = qa[d];
            for (int d = 0; d < db; d++) Qt[(size_t)(da + d) * QB + k] = qb[d];
            mv[k] = a->m[b->u[k]];
            lv[k] = a->l[b->u[k]];
        } else {
            for (int d = 0; d < da + db; d++) Qt[(size_t)d * QB + k] = 0.0f;
            mv[k] = -INFINITY;
            lv[k] = 0.0f;
        }
        lim_a[k] = nk;
        nkmax = PD_MAX(nkmax, nk);
    }
    if (nkmax == 0) return;
    const __m256i lim = _mm256_load_si256((const __m256i *)lim_a);
    __m256 m = _mm256_load_ps(mv), l = _mm256_load_ps(lv);
    const __m256 ninf = _mm256_set1_ps(-INFINITY), zero = _mm256_setzero_ps();
    float corr[QB] __attribute__((aligned(32)));
    for (int j0 = 0; j0 < nkmax; j0 += CHUNK) {
        const int nj = PD_MIN(CHUNK, nkmax - j0);
        const __m256 mx = block_scores(a, Qt, h, j0, nj, lim, S);
        const __m256 m_new = _mm256_max_ps(m, mx);
        /* a lane that has seen no key yet keeps m = -inf: subtract 0 instead, so nothing becomes NaN */
        const __m256 m_sub = _mm256_blendv_ps(m_new, zero, _mm256_cmp_ps(m_new, ninf, _CMP_EQ_OQ));
        const __m256 c = exp256(_mm256_sub_ps(m, m_sub));
        _mm256_store_ps(corr, c);
        __m256 lsum = zero;
        for (int j = 0; j < nj; j++) {
            const __m256 s = _mm256_load_ps(S + (size_t)j * QB);
            const __m256 ok = _mm256_cmp_ps(s, ninf, _CMP_NEQ_OQ);
            const __m256 p = _mm256_and_ps(ok, exp256(_mm256_sub_ps(s, m_sub)));
            _mm256_store_ps(S + (size_t)j * QB, p);
            lsum = _mm256_add_ps(lsum, p);
        }
        block_pv(a, b, j0, nj, S, corr);
        m = m_new;
        l = _mm256_fmadd_ps(l, c, lsum);
    }
    _mm256_store_ps(mv, m);
    _mm256_store_ps(lv, l);
    for (int k = 0; k < b->n; k++) {
        a->m[b->u[k]] = mv[k];
        a->l[b->u[k]] = lv[k];
    }
}

typedef struct {
    float *Qt, *S;
} block_bufs;

static void block_cb(const krn_attn_tile_args *a, const krn__attn_block *b, void *arg)
{
    const block_bufs *bb = arg;
    run_block(a, b, bb->Qt, bb->S);
}

void krn__attn_tile_avx2(const krn_attn_tile_args *a, int u0, int u1)
{
    if (a->da + a->db > DMAX) {
        krn__attn_tile_ref(a, u0, u1);
        return;
    }
    float Qt[DMAX * QB] __attribute__((aligned(32)));
    float S[CHUNK * QB] __attribute__((aligned(32)));
    block_bufs bufs = {Qt, S};
    krn__attn_blocks(a, u0, u1, QB, block_cb, &bufs);
}

/* ---- MLA's absorbed products ------------------------------------------------------------------------------- */

/* 8 values of row r of W from column c as f32 (nv valid columns; lanes past them are zero): BF16, F32 and FP8 (8
 * columns in one scale block) in registers, anything else and tails through krn_mat_row_part (buf: 8 floats). */
AVX2_INLINE __m256 w8(const krn_mat *w, int r, int c, int nv, float *buf)
{
    const size_t base = (size_t)r * w->cols + c;
    if (nv <= 0) return _mm256_setzero_ps();
    if (nv >= 8) {
        if (w->type == KRN_BF16) {
            const __m128i h = _mm_loadu_si128((const __m128i *)((const krn_bf16 *)w->data + base));
            return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
        if (w->type == KRN_F32) return _mm256_loadu_ps((const float *)w->data + base);
        if (w->type == KRN_F8E4M3 && c / w->block_c == (c + 7) / w->block_c) {
            /* one scale block: value * 2^-120 exactly, times scale * 2^120 (exact), one rounding: krn_mat_row_part's
             * bits (as the AVX-512 kernel) */
            const int sc = (w->cols + w->block_c - 1) / w->block_c;
            const float s = w->scale[(size_t)(r / w->block_r) * sc + c / w->block_c] * 0x1p120f;
            const __m128i q = _mm_loadl_epi64((const __m128i *)((const uint8_t *)w->data + base));
            const __m256i v = _mm256_slli_epi32(_mm256_cvtepi8_epi32(q), 20);
            const __m256 bits = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0x87f00000u)));
            return _mm256_mul_ps(bits, _mm256_set1_ps(s));
        }
    }
    krn_mat_row_part(w, r, c, PD_MIN(8, nv), buf);
    return _mm256_maskload_ps(buf, mask8(nv));
}

/* Up to 4 rows x 16 columns; per output one FMA chain over d in order (the AVX-512 kernel's chain). */
AVX2_INLINE void msub_tile(const int mr, const krn_mat *w, int r0, int c, int nc, const float *x, size_t ldx, int k,
                           float *y, size_t ldy, int accumulate)
{
    __m256 acc[4][2];
    __m256i km[2];
    float buf[8] __attribute__((aligned(32)));
    km[0] = mask8(nc);
    km[1] = mask8(nc - 8);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int v = 0; v < 2; v++)
            acc[i][v] = accumulate ? _mm256_maskload_ps(y + (size_t)i * ldy + 8 * v, km[v]) : _mm256_setzero_ps();
    for (int d = 0; d < k; d++) {
        const __m256 w0 = w8(w, r0 + d, c, nc, buf), w1 = w8(w, r0 + d, c + 8, nc - 8, buf);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            const __m256 a = _mm256_broadcast_ss(x + (size_t)i * ldx + d);
            acc[i][0] = _mm256_fmadd_ps(a, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, w1, acc[i][1]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
        for (int v = 0; v < 2; v++) _mm256_maskstore_ps(y + (size_t)i * ldy + 8 * v, km[v], acc[i][v]);
}

void krn__matmul_sub_avx2(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n, float *y,
                          size_t ldy, int accumulate)
{
    for (int c = 0; c < n; c += 16) {
        const int nc = PD_MIN(16, n - c);
        for (int i0 = 0; i0 < m; i0 += 4) {
            const float *xi = x + (size_t)i0 * ldx;
            float *yi = y + (size_t)i0 * ldy + c;
            switch (PD_MIN(4, m - i0)) {
            case 1: msub_tile(1, w, r0, c0 + c, nc, xi, ldx, k, yi, ldy, accumulate); break;
            case 2: msub_tile(2, w, r0, c0 + c, nc, xi, ldx, k, yi, ldy, accumulate); break;
            case 3: msub_tile(3, w, r0, c0 + c, nc, xi, ldx, k, yi, ldy, accumulate); break;
            default: msub_tile(4, w, r0, c0 + c, nc, xi, ldx, k, yi, ldy, accumulate); break;
            }
        }
    }
}

/* The sum of 16 lanes lo | hi in _mm512_reduce_add_ps's order (GCC): halves, then quarters, then lanes {0,2} and
 * {1,3}, then those two. */
AVX2_INLINE float reduce16(__m256 lo, __m256 hi)
{
    const __m256 t3 = _mm256_add_ps(hi, lo);
    const __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
    const __m128 t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(_mm_add_ss(t8, _mm_shuffle_ps(t8, t8, _MM_SHUFFLE(1, 1, 1, 1))));
}

/* Row r of W against up to 4 vectors: 16 lanes of FMAs over 16-column steps in order (zeros past the columns), then
 * reduce16: the AVX-512 kernel's sums. */
AVX2_INLINE void lrows_tile(const int mr, const krn_mat *w, int r, const float *x, size_t ldx, float *y, size_t ldy)
{
    __m256 lo[4], hi[4];
    float buf[8] __attribute__((aligned(32)));
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) lo[i] = hi[i] = _mm256_setzero_ps();
    for (int c = 0; c < w->cols; c += 16) {
        const int nv = w->cols - c;
        const __m256i k0 = mask8(nv), k1 = mask8(nv - 8);
        const __m256 w0 = w8(w, r, c, nv, buf), w1 = w8(w, r, c + 8, nv - 8, buf);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            lo[i] = _mm256_fmadd_ps(_mm256_maskload_ps(x + (size_t)i * ldx + c, k0), w0, lo[i]);
            hi[i] = _mm256_fmadd_ps(_mm256_maskload_ps(x + (size_t)i * ldx + c + 8, k1), w1, hi[i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) y[(size_t)i * ldy] = reduce16(lo[i], hi[i]);
}

void krn__linear_rows_avx2(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y, size_t ldy)
{
    for (int j = 0; j < n; j++)
        for (int i0 = 0; i0 < m; i0 += 4) {
            const float *xi = x + (size_t)i0 * ldx;
            float *yi = y + (size_t)i0 * ldy + j;
            switch (PD_MIN(4, m - i0)) {
            case 1: lrows_tile(1, w, r0 + j, xi, ldx, yi, ldy); break;
            case 2: lrows_tile(2, w, r0 + j, xi, ldx, yi, ldy); break;
            case 3: lrows_tile(3, w, r0 + j, xi, ldx, yi, ldy); break;
            default: lrows_tile(4, w, r0 + j, xi, ldx, yi, ldy); break;
            }
        }
}
