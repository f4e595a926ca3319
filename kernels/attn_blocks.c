/* How the vector attention tiles (kernels/avx2/attn_avx2.c, kernels/avx512/attn_avx512.c) group an attention tile's
 * (query, head) units into blocks that read the same keys and values, one vector lane per unit. */
#include "kernels/krn_impl.h"

void krn__attn_blocks(const krn_attn_tile_args *a, int u0, int u1, int qb,
                      void (*fn)(const krn_attn_tile_args *a, const krn__attn_block *b, void *arg), void *arg)
{
    krn__attn_block b;
    const int nh = a->nh;
    PD_ASSERT(qb >= 1 && qb <= KRN__ATTN_QB_MAX);
    if (a->ka_hstride == 0 && a->v_hstride == 0) { /* one shared head: consecutive units */
        for (int u = u0; u < u1; u += qb) {
            b.n = PD_MIN(qb, u1 - u);
            for (int k = 0; k < b.n; k++) {
                b.u[k] = u + k;
                b.i[k] = (u + k) / nh;
                b.h[k] = (u + k) % nh;
            }
            fn(a, &b, arg);
        }
        return;
    }
    for (int h = 0; h < nh; h++) { /* per head: the queries whose unit i*nh+h lies in [u0, u1) */
        const int i0 = u0 <= h ? 0 : (u0 - h + nh - 1) / nh;
        const int i1 = u1 - 1 < h ? -1 : (u1 - 1 - h) / nh; /* inclusive */
        for (int i = i0; i <= i1; i += qb) {
            b.n = PD_MIN(qb, i1 - i + 1);
            for (int k = 0; k < b.n; k++) {
                b.i[k] = i + k;
                b.h[k] = h;
                b.u[k] = (i + k) * nh + h;
            }
            fn(a, &b, arg);
        }
    }
}
