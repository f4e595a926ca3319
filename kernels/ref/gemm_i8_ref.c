/* Portable W8A8 kernels: per-row activation quantisation and the int8 GEMM over the KRN_PACK_I8_N32K4 layout
 * with int32 accumulation. The AVX-512 VNNI kernel must give bit-identical results (integer sums are exact and
 * the final scaling is done in the same order). */
#include "kernels/krn_impl.h"

void krn__quant_rows_ref(const float *x, int m, int k, int kq4, uint8_t *xq, float *xs)
{
    for (int i = 0; i < m; i++) {
        const float *r = x + (size_t)i * k;
        uint8_t *q = xq + (size_t)i * kq4;
        float amax = 0;
        for (int c = 0; c < k; c++) amax = fmaxf(amax, fabsf(r[c]));
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        xs[i] = amax / 127.0f;
        for (int c = 0; c < k; c++) {
            float v = nearbyintf(r[c] * inv); /* round half to even, as vcvtps2dq does */
            v = fminf(fmaxf(v, -127.0f), 127.0f);
            q[c] = (uint8_t)((int)v + 128);
        }
        for (int c = k; c < kq4; c++) q[c] = 128;
    }
}

void krn__gemm_i8_ref(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy, int nb0,
                      int nb1)
{
    const int kq = krn__kq4(w->cols) / 4, kq4 = krn__kq4(w->cols);
    const int8_t *W = w->packed;
    for (int nb = nb0; nb < nb1; nb++) {
        const int8_t *panel = W + (size_t)nb * kq * KRN_NR * 4;
        for (int j = 0; j < KRN_NR; j++) {
            const int n = nb * KRN_NR + j;
            if (n >= w->rows) break;
            for (int i = 0; i < m; i++) {
                const uint8_t *a = xq + (size_t)i * kq4;
                int32_t acc = 0;
                for (int q = 0; q < kq; q++)
                    for (int t = 0; t < 4; t++) acc += (int32_t)a[4 * q + t] * panel[((size_t)q * KRN_NR + j) * 4 + t];
                acc -= 128 * w->psum[n];
                y[(size_t)i * ldy + n] = (float)acc * (xs[i] * w->pscale[n]);
            }
        }
    }
}
