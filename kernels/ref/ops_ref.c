/* Portable reference kernels: linear layers (OpenBLAS sgemm for many rows, converted blocks for bf16),
 * normalisation, RoPE and the online-softmax attention tile. These are the oracle for optimised paths. */
#include <cblas.h>

#include "kernels/krn.h"

static void bf16_row_to_f32(const krn_bf16 *src, float *dst, int n)
{
    for (int i = 0; i < n; i++) dst[i] = krn_bf16_to_f32(src[i]);
}

void krn_mat_row(const krn_mat *w, int r, float *out)
{
    if (w->type == KRN_F32) memcpy(out, (const float *)w->data + (size_t)r * w->cols, (size_t)w->cols * 4);
    else bf16_row_to_f32((const krn_bf16 *)w->data + (size_t)r * w->cols, out, w->cols);
}

static float dot_f32(const float *a, const float *b, int n)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static float dot_bf16(const float *a, const krn_bf16 *b, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * krn_bf16_to_f32(b[i + k]);
    for (; i < n; i++) s[0] += a[i] * krn_bf16_to_f32(b[i]);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void krn_linear(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch)
{
    const int N = w->rows, K = w->cols;
    if (m <= 0) return;
    if (w->type == KRN_F32) {
        if (m == 1) {
            const float *W = w->data;
            for (int n = 0; n < N; n++) y[n] = dot_f32(x, W + (size_t)n * K, K);
            return;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, N, K, 1.0f, x, K, w->data, K, 0.0f, y, ldy);
        return;
    }
    const krn_bf16 *W = w->data;
    if (m <= 2) {
        for (int r = 0; r < m; r++)
            for (int n = 0; n < N; n++) y[(size_t)r * ldy + n] = dot_bf16(x + (size_t)r * K, W + (size_t)n * K, K);
        return;
    }
    for (int n0 = 0; n0 < N; n0 += KRN_LINEAR_BLOCK) {
        int nb = PD_MIN(KRN_LINEAR_BLOCK, N - n0);
        for (int r = 0; r < nb; r++) bf16_row_to_f32(W + (size_t)(n0 + r) * K, scratch + (size_t)r * K, K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nb, K, 1.0f, x, K, scratch, K, 0.0f, y + n0, ldy);
    }
}

void krn_matmul_sub(const krn_mat *w, int r0, int c0, const float *x, int m, int k, int n, float *y, int accumulate)
{
    const int C = w->cols;
    if (!accumulate) memset(y, 0, (size_t)m * n * sizeof(float));
    for (int i = 0; i < m; i++) {
        float *yi = y + (size_t)i * n;
        const float *xi = x + (size_t)i * k;
        for (int d = 0; d < k; d++) {
            float a = xi[d];
            if (w->type == KRN_F32) {
                const float *row = (const float *)w->data + (size_t)(r0 + d) * C + c0;
                for (int c = 0; c < n; c++) yi[c] += a * row[c];
            } else {
                const krn_bf16 *row = (const krn_bf16 *)w->data + (size_t)(r0 + d) * C + c0;
                for (int c = 0; c < n; c++) yi[c] += a * krn_bf16_to_f32(row[c]);
            }
        }
    }
}

void krn_rmsnorm(const float *x, const float *w, int n, float eps, float *out)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

void krn_silu_mul(float *gate, const float *up, int n)
{
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void krn_rope_interleaved(float *x, int n, const float *cos_t, const float *sin_t)
{
    for (int i = 0; i < n / 2; i++) {
        float a = x[2 * i], b = x[2 * i + 1], c = cos_t[i], s = sin_t[i];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

void krn_softmax(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void krn_axpy(int n, float a, const float *x, float *y)
{
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void krn_attn_init(int nq, int nh, int dv, float *m, float *l, float *acc, int acc_stride, int acc_hstride)
{
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < nh; h++) {
            m[i * nh + h] = -INFINITY;
            l[i * nh + h] = 0.0f;
            memset(acc + (size_t)i * acc_stride + (size_t)h * acc_hstride, 0, (size_t)dv * sizeof(float));
        }
}

void krn_attn_finish(int nq, int nh, int dv, const float *l, float *acc, int acc_stride, int acc_hstride)
{
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < nh; h++) {
            float *a = acc + (size_t)i * acc_stride + (size_t)h * acc_hstride;
            float li = l[i * nh + h];
            float inv = li > 0 ? 1.0f / li : 0.0f;
            for (int d = 0; d < dv; d++) a[d] *= inv;
        }
}

void krn_attn_tile(const krn_attn_tile_args *a)
{
    for (int i = 0; i < a->nq; i++) {
        int nk = a->q_limit[i] - a->k_pos0 + 1; /* keys this query may see */
        if (nk <= 0) continue;
        if (nk > a->nk) nk = a->nk;
        for (int h = 0; h < a->nh; h++) {
            const float *qa = a->qa + (size_t)i * a->qa_stride + (size_t)h * a->qa_hstride;
            const float *qb = a->qb + (size_t)i * a->qb_stride + (size_t)h * a->qb_hstride;
            float mx = -INFINITY;
            for (int j = 0; j < nk; j++) {
                const float *ka = a->ka + (size_t)j * a->ka_stride + (size_t)h * a->ka_hstride;
                const float *kb = a->kb + (size_t)j * a->kb_stride;
                float s = (dot_f32(qa, ka, a->da) + dot_f32(qb, kb, a->db)) * a->scale;
                a->scores[j] = s;
                mx = s > mx ? s : mx;
            }
            float *mp = &a->m[i * a->nh + h], *lp = &a->l[i * a->nh + h];
            float *acc = a->acc + (size_t)i * a->acc_stride + (size_t)h * a->acc_hstride;
            float m_new = mx > *mp ? mx : *mp;
            float corr = expf(*mp - m_new); /* exp(-inf) = 0 on the first tile */
            float l = *lp * corr;
            if (corr != 1.0f)
                for (int d = 0; d < a->dv; d++) acc[d] *= corr;
            for (int j = 0; j < nk; j++) {
                float p = expf(a->scores[j] - m_new);
                l += p;
                const float *v = a->v + (size_t)j * a->v_stride + (size_t)h * a->v_hstride;
                for (int d = 0; d < a->dv; d++) acc[d] += p * v[d];
            }
            *mp = m_new;
            *lp = l;
        }
    }
}
