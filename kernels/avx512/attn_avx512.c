/* The online-softmax attention tile on AVX-512 (flash-attention style: never more than a chunk of scores), shaped as
 * small GEMMs. Units (query, head) that read the same keys and values go in blocks of 16, one vector lane each:
 * the 16 heads of a query when K/V are one shared latent head (MLA absorbed decode), else 16 queries of one head
 * (prefill). A block's queries are transposed once per call (Qt[d][lane]), so the scores of a key are one FMA
 * chain per lane, d in order, with the key's element broadcast; max, exp, the running sums and the causal mask
 * are lane-wise; then acc[unit] += p * v over the chunk's keys, 6 units x 64 values of accumulators at a time.
 * Each unit's arithmetic is the same whatever block it lands in (lanes never mix), so a row's result does not
 * depend on how many queries a pass has (speculative verify == plain decode, bit for bit).
 * Same semantics as kernels/ref/ops_ref.c. */
#include "kernels/avx512/avx512_util.h"

#define QB 16       /* units per block: the lanes */
#define CHUNK 64    /* keys per online-softmax step */
#define NJ 8        /* keys scored at once (8 accumulators, Qt[d] loaded once for them) */
#define QG 6        /* units per group in P.V: QG x DVB accumulators */
#define DVB 4       /* value vectors (64 floats) per P.V pass */
#define DMAX 1024   /* da + db handled here; larger heads take the reference kernel */

/* Scores of keys [j0, j0 + nj) for the block's lanes into S[j][16], scaled, -inf where a lane may not see the key;
 * returns the lane-wise max. */
KRN_INLINE __m512 block_scores(const krn_attn_tile_args *a, const float *Qt, int h, int j0, int nj, __m512i lim,
                               float *S)
{
    const int da = a->da, db = a->db;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    const __m512 scale = _mm512_set1_ps(a->scale), ninf = _mm512_set1_ps(-INFINITY);
    for (int jb = 0; jb < nj; jb += NJ) {
        const float *ka[NJ], *kb[NJ];
        for (int t = 0; t < NJ; t++) { /* keys past the chunk read the first one's row; their lanes are masked */
            const int j = j0 + (jb + t < nj ? jb + t : 0);
            ka[t] = a->ka + (size_t)j * a->ka_stride + (size_t)h * a->ka_hstride;
            kb[t] = a->kb + (size_t)j * a->kb_stride;
        }
        __m512 s[NJ];
#pragma GCC unroll 8
        for (int t = 0; t < NJ; t++) s[t] = _mm512_setzero_ps();
        for (int d = 0; d < da; d++) {
            const __m512 q = _mm512_load_ps(Qt + (size_t)d * QB);
#pragma GCC unroll 8
            for (int t = 0; t < NJ; t++) s[t] = _mm512_fmadd_ps(_mm512_set1_ps(ka[t][d]), q, s[t]);
        }
        for (int d = 0; d < db; d++) {
            const __m512 q = _mm512_load_ps(Qt + (size_t)(da + d) * QB);
#pragma GCC unroll 8
            for (int t = 0; t < NJ; t++) s[t] = _mm512_fmadd_ps(_mm512_set1_ps(kb[t][d]), q, s[t]);
        }
#pragma GCC unroll 8
        for (int t = 0; t < NJ; t++) {
            if (jb + t >= nj) break;
            /* lane k sees key j0 + jb + t when it is below the lane's key count */
            const __mmask16 ok = _mm512_cmpgt_epi32_mask(lim, _mm512_set1_epi32(j0 + jb + t));
            const __m512 v = _mm512_mask_mov_ps(ninf, ok, _mm512_mul_ps(s[t], scale));
            _mm512_store_ps(S + (size_t)(jb + t) * QB, v);
            mx = _mm512_max_ps(mx, v);
        }
    }
    return mx;
}

/* acc[unit] = acc * corr + sum_j P[j][lane] v[j] for the block's units, values [0, dv). */
static void block_pv(const krn_attn_tile_args *a, const krn__attn_block *b, int j0, int nj, const float *P,
                     const float *corr)
{
    const int dv = a->dv, h = b->h[0];
    for (int d0 = 0; d0 < dv; d0 += DVB * 16) {
        __mmask16 km[DVB];
#pragma GCC unroll 4
        for (int t = 0; t < DVB; t++) km[t] = krn__mask16(dv - d0 - 16 * t);
        for (int g0 = 0; g0 < b->n; g0 += QG) {
            const int ng = PD_MIN(QG, b->n - g0);
            __m512 r[QG][DVB];
            float *acc[QG];
#pragma GCC unroll 6
            for (int k = 0; k < QG; k++) {
                const int kk = k < ng ? g0 + k : g0; /* spare accumulators mirror the first unit, never stored */
                acc[k] = a->acc + (size_t)b->i[kk] * a->acc_stride + (size_t)b->h[kk] * a->acc_hstride + d0;
                const __m512 c = _mm512_set1_ps(corr[kk]);
#pragma GCC unroll 4
                for (int t = 0; t < DVB; t++) r[k][t] = _mm512_mul_ps(_mm512_maskz_loadu_ps(km[t], acc[k] + 16 * t), c);
            }
            for (int j = 0; j < nj; j++) {
                const float *v = a->v + (size_t)(j0 + j) * a->v_stride + (size_t)h * a->v_hstride + d0;
                __m512 vv[DVB];
#pragma GCC unroll 4
                for (int t = 0; t < DVB; t++) vv[t] = _mm512_maskz_loadu_ps(km[t], v + 16 * t);
                const float *p = P + (size_t)j * QB + g0;
#pragma GCC unroll 6
                for (int k = 0; k < QG; k++) {
                    const __m512 pk = _mm512_set1_ps(p[k < ng ? k : 0]);
#pragma GCC unroll 4
                    for (int t = 0; t < DVB; t++) r[k][t] = _mm512_fmadd_ps(pk, vv[t], r[k][t]);
                }
            }
            for (int k = 0; k < ng; k++)
#pragma GCC unroll 4
                for (int t = 0; t < DVB; t++) _mm512_mask_storeu_ps(acc[k] + 16 * t, km[t], r[k][t]);
        }
    }
}

static void run_block(const krn_attn_tile_args *a, const krn__attn_block *b, float *Qt, float *S)
{
    const int da = a->da, db = a->db, h = b->h[0];
    int lim_a[QB] __attribute__((aligned(64)));
    float mv[QB] __attribute__((aligned(64))), lv[QB] __attribute__((aligned(64)));
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
    const __m512i lim = _mm512_load_si512(lim_a);
    __m512 m = _mm512_load_ps(mv), l = _mm512_load_ps(lv);
    const __m512 ninf = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
    float corr[QB] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < nkmax; j0 += CHUNK) {
        const int nj = PD_MIN(CHUNK, nkmax - j0);
        const __m512 mx = block_scores(a, Qt, h, j0, nj, lim, S);
        const __m512 m_new = _mm512_max_ps(m, mx);
        /* a lane that has seen no key yet keeps m = -inf: subtract 0 instead, so nothing becomes NaN */
        const __m512 m_sub = _mm512_mask_mov_ps(m_new, _mm512_cmp_ps_mask(m_new, ninf, _CMP_EQ_OQ), zero);
        const __m512 c = krn__exp512(_mm512_sub_ps(m, m_sub));
        _mm512_store_ps(corr, c);
        __m512 lsum = zero;
        for (int j = 0; j < nj; j++) {
            const __m512 s = _mm512_load_ps(S + (size_t)j * QB);
            const __mmask16 ok = _mm512_cmp_ps_mask(s, ninf, _CMP_NEQ_OQ);
            const __m512 p = _mm512_maskz_mov_ps(ok, krn__exp512(_mm512_sub_ps(s, m_sub)));
            _mm512_store_ps(S + (size_t)j * QB, p);
            lsum = _mm512_add_ps(lsum, p);
        }
        block_pv(a, b, j0, nj, S, corr);
        m = m_new;
        l = _mm512_fmadd_ps(l, c, lsum);
    }
    _mm512_store_ps(mv, m);
    _mm512_store_ps(lv, l);
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

void krn__attn_tile_avx512(const krn_attn_tile_args *a, int u0, int u1)
{
    if (a->da + a->db > DMAX) {
        krn__attn_tile_ref(a, u0, u1);
        return;
    }
    float Qt[DMAX * QB] __attribute__((aligned(64)));
    float S[CHUNK * QB] __attribute__((aligned(64)));
    block_bufs bufs = {Qt, S};
    krn__attn_blocks(a, u0, u1, QB, block_cb, &bufs);
}
