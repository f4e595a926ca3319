/* The two small products of MLA's absorbed decode form on AVX-512, over the plain (unpacked) kv_b_proj rows:
 * krn_matmul_sub (q_nope into the latent space: axpy of weight rows) and krn_linear_rows (latent back to v:
 * dots of weight rows). BF16 and F32 rows convert in registers; other types go through krn_mat_row_part. */
#include "kernels/avx512/avx512_util.h"

#define CH 256 /* columns per chunk */

/* Row r, columns [c0, c0+n) (n <= CH) as f32 into buf, or a direct pointer for F32 weights. */
static const float *row_chunk(const krn_mat *w, int r, int c0, int n, float *buf)
{
    const size_t base = (size_t)r * w->cols + c0;
    if (w->type == KRN_F32) return (const float *)w->data + base;
    if (w->type == KRN_BF16) {
        const krn_bf16 *s = (const krn_bf16 *)w->data + base;
        for (int c = 0; c < n; c += 16) _mm512_store_ps(buf + c, krn__bf16x16_to_f32(s + c, krn__mask16(n - c)));
        return buf;
    }
    krn_mat_row_part(w, r, c0, n, buf);
    return buf;
}

void krn__matmul_sub_avx512(const krn_mat *w, int r0, int c0, const float *x, int m, int k, int n, float *y,
                            int accumulate)
{
    float buf[CH] __attribute__((aligned(64)));
    if (!accumulate) memset(y, 0, (size_t)m * n * sizeof(float));
    for (int cc = 0; cc < n; cc += CH) {
        const int nc = PD_MIN(CH, n - cc);
        for (int d = 0; d < k; d++) {
            const float *row = row_chunk(w, r0 + d, c0 + cc, nc, buf);
            for (int i = 0; i < m; i++) {
                const __m512 a = _mm512_set1_ps(x[(size_t)i * k + d]);
                float *yi = y + (size_t)i * n + cc;
                for (int c = 0; c < nc; c += 16) {
                    const __mmask16 km = krn__mask16(nc - c);
                    _mm512_mask_storeu_ps(yi + c, km, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(km, row + c),
                                                                      _mm512_maskz_loadu_ps(km, yi + c)));
                }
            }
        }
    }
}

void krn__linear_rows_avx512(const krn_mat *w, int r0, int n, const float *x, float *y)
{
    float buf[CH] __attribute__((aligned(64)));
    for (int j = 0; j < n; j++) {
        __m512 acc = _mm512_setzero_ps();
        for (int c0 = 0; c0 < w->cols; c0 += CH) {
            const int nc = PD_MIN(CH, w->cols - c0);
            const float *row = row_chunk(w, r0 + j, c0, nc, buf);
            for (int c = 0; c < nc; c += 16) {
                const __mmask16 km = krn__mask16(nc - c);
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, x + c0 + c), _mm512_maskz_loadu_ps(km, row + c), acc);
            }
        }
        y[j] = _mm512_reduce_add_ps(acc);
    }
}
