/* Weight packing, done once at load: the plain row-major matrix -> a layout whose 32 output rows for one k
 * (or k-pair, k-quad) are contiguous, so a kernel streams one panel per 32 outputs with aligned vector loads.
 * FP8 stays FP8 (1 byte/weight, block scales expanded per output row); W8A8 quantises to int8 here. */
#include "kernels/krn_impl.h"

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static krn_pack pack_kind(const krn_mat *w, krn_prepack_mode mode)
{
    if (mode == KRN_PREPACK_W8A8) return KRN_PACK_I8_N32K4;
    const krn__ops *o = krn__ops_get();
    if (w->type == KRN_BF16) return o->fast_bf16;
    if (w->type == KRN_F8E4M3) {
        /* the column scales carry 2^120 (see KRN_F8_BIAS_SCALE); a scale that would overflow keeps the plain path */
        const int sr = (w->rows + w->block_r - 1) / w->block_r, sc = krn__f8_kblocks(w);
        for (int i = 0; i < sr * sc; i++)
            if (!isfinite(w->scale[i] * KRN_F8_BIAS_SCALE)) return KRN_PACK_NONE;
        return o->fast_f8;
    }
    return KRN_PACK_NONE;
}

static size_t pack_bytes(const krn_mat *w, krn_pack k)
{
    const size_t nb = (size_t)krn__nblocks(w->rows), K = (size_t)w->cols;
    switch (k) {
    case KRN_PACK_BF16_N32K2: return nb * ((K + 1) / 2) * KRN_NR * 2 * sizeof(krn_bf16);
    case KRN_PACK_F8_N32K1: return align64(nb * K * KRN_NR) + nb * (size_t)krn__f8_kblocks(w) * KRN_NR * sizeof(float);
    case KRN_PACK_I8_N32K4:
        return align64(nb * (size_t)krn__kq4(w->cols) * KRN_NR) + 2 * nb * KRN_NR * sizeof(float);
    default: return 0;
    }
}

size_t krn_mat_prepack_size(const krn_mat *w, krn_prepack_mode mode)
{
    if (!w || !w->data || w->rows < 1 || w->cols < 1) return 0;
    return pack_bytes(w, pack_kind(w, mode));
}

static void pack_bf16(const krn_mat *w, krn_bf16 *dst)
{
    const int K = w->cols, kp = (K + 1) / 2, nb = krn__nblocks(w->rows);
    const krn_bf16 *src = w->data;
    memset(dst, 0, pack_bytes(w, KRN_PACK_BF16_N32K2));
    for (int n = 0; n < w->rows; n++) {
        krn_bf16 *panel = dst + (size_t)(n / KRN_NR) * kp * KRN_NR * 2 + (size_t)(n % KRN_NR) * 2;
        const krn_bf16 *row = src + (size_t)n * K;
        for (int k = 0; k < K; k++) panel[(size_t)(k / 2) * KRN_NR * 2 + (k & 1)] = row[k];
    }
    (void)nb;
}

static void pack_f8(const krn_mat *w, uint8_t *dst)
{
    const int K = w->cols, nb = krn__nblocks(w->rows), kb = krn__f8_kblocks(w);
    const uint8_t *src = w->data;
    memset(dst, 0, pack_bytes(w, KRN_PACK_F8_N32K1));
    float *sc = (float *)(dst + align64((size_t)nb * K * KRN_NR));
    for (int n = 0; n < w->rows; n++) {
        uint8_t *panel = dst + (size_t)(n / KRN_NR) * K * KRN_NR + (n % KRN_NR);
        const uint8_t *row = src + (size_t)n * K;
        for (int k = 0; k < K; k++) panel[(size_t)k * KRN_NR] = row[k];
        for (int b = 0; b < kb; b++)
            sc[((size_t)(n / KRN_NR) * kb + b) * KRN_NR + n % KRN_NR] =
                w->scale[(size_t)(n / w->block_r) * kb + b] * KRN_F8_BIAS_SCALE;
    }
}

/* Per output row: scale = amax / 127, q = round(w * 127 / amax); the row sum lets the kernels use unsigned
 * activations (u8 = q + 128) with VNNI's u8 x s8 product and subtract 128 * sum afterwards. */
static void pack_i8(const krn_mat *w, uint8_t *dst)
{
    const int K = w->cols, kq = krn__kq4(K) / 4, nb = krn__nblocks(w->rows);
    memset(dst, 0, pack_bytes(w, KRN_PACK_I8_N32K4));
    int8_t *q8 = (int8_t *)dst;
    float *scale = (float *)(dst + align64((size_t)nb * kq * 4 * KRN_NR));
    int32_t *sum = (int32_t *)(scale + (size_t)nb * KRN_NR);
    float buf[256];
    for (int n = 0; n < w->rows; n++) {
        float amax = 0;
        for (int c0 = 0; c0 < K; c0 += 256) {
            int nc = PD_MIN(256, K - c0);
            krn_mat_row_part(w, n, c0, nc, buf);
            for (int c = 0; c < nc; c++) amax = fmaxf(amax, fabsf(buf[c]));
        }
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        int8_t *panel = q8 + (size_t)(n / KRN_NR) * kq * KRN_NR * 4 + (size_t)(n % KRN_NR) * 4;
        int32_t s = 0;
        for (int c0 = 0; c0 < K; c0 += 256) {
            int nc = PD_MIN(256, K - c0);
            krn_mat_row_part(w, n, c0, nc, buf);
            for (int c = 0; c < nc; c++) {
                int k = c0 + c;
                int v = (int)fminf(fmaxf(nearbyintf(buf[c] * inv), -127.0f), 127.0f);
                panel[(size_t)(k / 4) * KRN_NR * 4 + (k & 3)] = (int8_t)v;
                s += v;
            }
        }
        scale[n] = amax / 127.0f;
        sum[n] = s;
    }
}

pd_status krn_mat_prepack(krn_mat *w, krn_prepack_mode mode, void *buf)
{
    const size_t need = krn_mat_prepack_size(w, mode);
    if (!need || !buf || ((uintptr_t)buf & 63)) return PD_ERR_INVALID;
    const krn_pack k = pack_kind(w, mode);
    const size_t nb = (size_t)krn__nblocks(w->rows);
    switch (k) {
    case KRN_PACK_BF16_N32K2:
        pack_bf16(w, buf);
        w->pscale = NULL;
        w->psum = NULL;
        break;
    case KRN_PACK_F8_N32K1:
        pack_f8(w, buf);
        w->pscale = (const float *)((uint8_t *)buf + align64(nb * (size_t)w->cols * KRN_NR));
        w->psum = NULL;
        break;
    case KRN_PACK_I8_N32K4:
        pack_i8(w, buf);
        w->pscale = (const float *)((uint8_t *)buf + align64(nb * (size_t)krn__kq4(w->cols) * KRN_NR));
        w->psum = (const int32_t *)(w->pscale + nb * KRN_NR);
        break;
    default: return PD_ERR_INVALID;
    }
    w->pack = k;
    w->packed = buf;
    return PD_OK;
}
