/* Portable reference kernels: linear layers (OpenBLAS sgemm for many rows, converted blocks for bf16),
 * normalisation, RoPE and the online-softmax attention tile. These are the oracle for optimised paths;
 * the public entry points in kernels/dispatch.c call them through the kernel table. */
#include <cblas.h>

#include "kernels/krn_impl.h"

const char *krn_type_name(krn_type t)
{
    switch (t) {
    case KRN_F32: return "float32";
    case KRN_BF16: return "bfloat16";
    case KRN_F16: return "float16";
    case KRN_F8E4M3: return "float8_e4m3";
    }
    return "?";
}

void krn_mat_row_part(const krn_mat *w, int r, int c0, int n, float *out)
{
    const size_t base = (size_t)r * w->cols + c0;
    switch (w->type) {
    case KRN_F32: memcpy(out, (const float *)w->data + base, (size_t)n * 4); break;
    case KRN_BF16: {
        const krn_bf16 *s = (const krn_bf16 *)w->data + base;
        for (int i = 0; i < n; i++) out[i] = krn_bf16_to_f32(s[i]);
        break;
    }
    case KRN_F16: {
        const uint16_t *s = (const uint16_t *)w->data + base;
        for (int i = 0; i < n; i++) out[i] = krn_f16_to_f32(s[i]);
        break;
    }
    case KRN_F8E4M3: {
        const uint8_t *s = (const uint8_t *)w->data + base;
        const int sc = (w->cols + w->block_c - 1) / w->block_c;
        const float *srow = w->scale + (size_t)(r / w->block_r) * sc;
        for (int i = 0; i < n; i++) out[i] = krn_e4m3_to_f32(s[i]) * srow[(c0 + i) / w->block_c];
        break;
    }
    }
}

void krn_mat_row(const krn_mat *w, int r, float *out) { krn_mat_row_part(w, r, 0, w->cols, out); }

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

void krn__linear_ref(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch)
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
    if (m <= 2 && w->type == KRN_BF16) {
        const krn_bf16 *W = w->data;
        for (int r = 0; r < m; r++)
            for (int n = 0; n < N; n++) y[(size_t)r * ldy + n] = dot_bf16(x + (size_t)r * K, W + (size_t)n * K, K);
        return;
    }
    /* other types and many rows: convert a block of weight rows to float32, then sgemm (or dots) */
    for (int n0 = 0; n0 < N; n0 += KRN_LINEAR_BLOCK) {
        int nb = PD_MIN(KRN_LINEAR_BLOCK, N - n0);
        for (int r = 0; r < nb; r++) krn_mat_row(w, n0 + r, scratch + (size_t)r * K);
        if (m <= 2) {
            for (int i = 0; i < m; i++)
                for (int r = 0; r < nb; r++)
                    y[(size_t)i * ldy + n0 + r] = dot_f32(x + (size_t)i * K, scratch + (size_t)r * K, K);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nb, K, 1.0f, x, K, scratch, K, 0.0f, y + n0, ldy);
        }
    }
}

void krn__linear_fixed_ref(const krn_mat *w, int n0, int n1, const float *x, int m, float *y, int ldy, float *rowbuf)
{
    const int K = w->cols;
    for (int n = n0; n < n1; n++) {
        if (w->type == KRN_BF16) {
            const krn_bf16 *wr = (const krn_bf16 *)w->data + (size_t)n * K;
            for (int i = 0; i < m; i++) y[(size_t)i * ldy + n] = dot_bf16(x + (size_t)i * K, wr, K);
            continue;
        }
        const float *wr = (const float *)w->data + (size_t)n * K;
        if (w->type != KRN_F32) {
            krn_mat_row(w, n, rowbuf);
            wr = rowbuf;
        }
        for (int i = 0; i < m; i++) y[(size_t)i * ldy + n] = dot_f32(x + (size_t)i * K, wr, K);
    }
}

void krn__linear_rows_ref(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y, size_t ldy)
{
    float buf[256];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float acc = 0;
            for (int c0 = 0; c0 < w->cols; c0 += (int)PD_ARRAY_LEN(buf)) {
                int nc = PD_MIN((int)PD_ARRAY_LEN(buf), w->cols - c0);
                krn_mat_row_part(w, r0 + j, c0, nc, buf);
                acc += dot_f32(x + (size_t)i * ldx + c0, buf, nc);
            }
            y[(size_t)i * ldy + j] = acc;
        }
}

void krn__matmul_sub_ref(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n, float *y,
                         size_t ldy, int accumulate)
{
    float buf[256];
    if (!accumulate)
        for (int i = 0; i < m; i++) memset(y + (size_t)i * ldy, 0, (size_t)n * sizeof(float));
    for (int d = 0; d < k; d++) {
        for (int cc = 0; cc < n; cc += (int)PD_ARRAY_LEN(buf)) {
            int nc = PD_MIN((int)PD_ARRAY_LEN(buf), n - cc);
            krn_mat_row_part(w, r0 + d, c0 + cc, nc, buf);
            for (int i = 0; i < m; i++) {
                float a = x[(size_t)i * ldx + d];
                float *yi = y + (size_t)i * ldy + cc;
                for (int c = 0; c < nc; c++) yi[c] += a * buf[c];
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

/* Work units u in [u0, u1) are (query, head) pairs u = i * nh + h, so callers can split heads of one query. */
void krn__attn_tile_ref(const krn_attn_tile_args *a, int u0, int u1)
{
    float scores[256];
    for (int u = u0; u < u1; u++) {
        const int i = u / a->nh, h = u % a->nh;
        int nk = a->q_limit[i] - a->k_pos0 + 1; /* keys this query may see */
        if (nk <= 0) continue;
        if (nk > a->nk) nk = a->nk;
        const float *qa = a->qa + (size_t)i * a->qa_stride + (size_t)h * a->qa_hstride;
        const float *qb = a->qb + (size_t)i * a->qb_stride + (size_t)h * a->qb_hstride;
        float *mp = &a->m[i * a->nh + h], *lp = &a->l[i * a->nh + h];
        float *acc = a->acc + (size_t)i * a->acc_stride + (size_t)h * a->acc_hstride;
        /* keys in chunks that fit the local score buffer; each chunk is one online-softmax step */
        for (int j0 = 0; j0 < nk; j0 += (int)PD_ARRAY_LEN(scores)) {
            const int nj = PD_MIN((int)PD_ARRAY_LEN(scores), nk - j0);
            float mx = -INFINITY;
            for (int j = 0; j < nj; j++) {
                const float *ka = a->ka + (size_t)(j0 + j) * a->ka_stride + (size_t)h * a->ka_hstride;
                const float *kb = a->kb + (size_t)(j0 + j) * a->kb_stride;
                float s = (dot_f32(qa, ka, a->da) + dot_f32(qb, kb, a->db)) * a->scale;
                scores[j] = s;
                mx = s > mx ? s : mx;
            }
            float m_new = mx > *mp ? mx : *mp;
            float corr = expf(*mp - m_new); /* exp(-inf) = 0 on the first tile */
            float l = *lp * corr;
            if (corr != 1.0f)
                for (int d = 0; d < a->dv; d++) acc[d] *= corr;
            for (int j = 0; j < nj; j++) {
                float p = expf(scores[j] - m_new);
                l += p;
                const float *v = a->v + (size_t)(j0 + j) * a->v_stride + (size_t)h * a->v_hstride;
                for (int d = 0; d < a->dv; d++) acc[d] += p * v[d];
            }
            *mp = m_new;
            *lp = l;
        }
    }
}

float krn__logsumexp_ref(const float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) return mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    return mx + (float)log(sum);
}

void krn__to_f32_ref(krn_type t, const void *src, float *dst, int n)
{
    if (t == KRN_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (t == KRN_F16) {
        const uint16_t *s = src;
        for (int i = 0; i < n; i++) dst[i] = krn_f16_to_f32(s[i]);
    } else {
        const krn_bf16 *s = src;
        for (int i = 0; i < n; i++) dst[i] = krn_bf16_to_f32(s[i]);
    }
}
