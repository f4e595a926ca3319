/* The online-softmax attention tile on AVX-512 (flash-attention style: never more than a chunk of scores).
 * Per (query, head) unit and chunk of up to 64 keys: scores by 16-lane dot products, one max, a vector exp,
 * then acc = acc * corr + sum_j p_j v_j with the accumulator held in registers 128 values at a time.
 * Same semantics as kernels/ref/ops_ref.c; serves prefill heads (dv = v_head_dim) and MLA absorbed decode
 * (one shared latent "head", dv = kv_lora_rank). */
#include "kernels/avx512/avx512_util.h"

#define CHUNK 64
#define DV_REG 8 /* 8 x 16 accumulator lanes in registers per pass over a chunk's values */

KRN_INLINE float dot(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int c = 0;
    for (; c + 32 <= n; c += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), _mm512_loadu_ps(b + c), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c + 16), _mm512_loadu_ps(b + c + 16), s1);
    }
    for (; c < n; c += 16) {
        const __mmask16 km = krn__mask16(n - c);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, a + c), _mm512_maskz_loadu_ps(km, b + c), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void krn__attn_tile_avx512(const krn_attn_tile_args *a, int u0, int u1)
{
    float sc[CHUNK] __attribute__((aligned(64)));
    const int dv = a->dv;
    for (int u = u0; u < u1; u++) {
        const int i = u / a->nh, h = u % a->nh;
        int nk = a->q_limit[i] - a->k_pos0 + 1;
        if (nk <= 0) continue;
        if (nk > a->nk) nk = a->nk;
        const float *qa = a->qa + (size_t)i * a->qa_stride + (size_t)h * a->qa_hstride;
        const float *qb = a->qb + (size_t)i * a->qb_stride + (size_t)h * a->qb_hstride;
        float *mp = &a->m[i * a->nh + h], *lp = &a->l[i * a->nh + h];
        float *acc = a->acc + (size_t)i * a->acc_stride + (size_t)h * a->acc_hstride;
        for (int j0 = 0; j0 < nk; j0 += CHUNK) {
            const int nj = PD_MIN(CHUNK, nk - j0);
            float mx = -INFINITY;
            for (int j = 0; j < nj; j++) {
                const float *ka = a->ka + (size_t)(j0 + j) * a->ka_stride + (size_t)h * a->ka_hstride;
                const float *kb = a->kb + (size_t)(j0 + j) * a->kb_stride;
                const float s = (dot(qa, ka, a->da) + dot(qb, kb, a->db)) * a->scale;
                sc[j] = s;
                mx = s > mx ? s : mx;
            }
            const float m_new = mx > *mp ? mx : *mp;
            const float corr = expf(*mp - m_new);
            const __m512 mv = _mm512_set1_ps(m_new);
            __m512 lsum = _mm512_setzero_ps();
            for (int j = 0; j < nj; j += 16) {
                const __mmask16 km = krn__mask16(nj - j);
                const __m512 p = _mm512_maskz_mov_ps(km, krn__exp512(_mm512_sub_ps(_mm512_load_ps(sc + j), mv)));
                _mm512_store_ps(sc + j, p);
                lsum = _mm512_add_ps(lsum, p);
            }
            const __m512 cv = _mm512_set1_ps(corr);
            for (int d0 = 0; d0 < dv; d0 += DV_REG * 16) {
                __m512 r[DV_REG];
                __mmask16 km[DV_REG];
#pragma GCC unroll 8
                for (int t = 0; t < DV_REG; t++) {
                    km[t] = krn__mask16(dv - d0 - 16 * t);
                    r[t] = _mm512_mul_ps(_mm512_maskz_loadu_ps(km[t], acc + d0 + 16 * t), cv);
                }
                for (int j = 0; j < nj; j++) {
                    const float *v = a->v + (size_t)(j0 + j) * a->v_stride + (size_t)h * a->v_hstride + d0;
                    const __m512 p = _mm512_set1_ps(sc[j]);
#pragma GCC unroll 8
                    for (int t = 0; t < DV_REG; t++)
                        if (km[t]) r[t] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(km[t], v + 16 * t), r[t]);
                }
#pragma GCC unroll 8
                for (int t = 0; t < DV_REG; t++) _mm512_mask_storeu_ps(acc + d0 + 16 * t, km[t], r[t]);
            }
            *mp = m_new;
            *lp = *lp * corr + _mm512_reduce_add_ps(lsum);
        }
    }
}
