/* Kernel tests: number formats, linear layers of every weight type against a float64 reference on awkward
 * sizes, the online-softmax attention tile against a naive softmax, and the sampler (greedy, seeds, top-k/p,
 * min-p, penalties, distribution), and main. The "paths" case (test_kernels_paths.c) reruns the kernels on every
 * kernel table this CPU supports and thread counts 1-3, packed as the loader packs. */
#include <check.h>
#include <math.h>
#include <string.h>

#include "kernels/krn.h"
#include "kernels/krn_impl.h"
#include "pd_check.h"
#include "test_kernels.h"

pd_rng g_kernels_rng;

START_TEST(test_formats)
{
    /* bf16: round to nearest even */
    ck_assert_uint_eq(krn_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_float_eq(krn_bf16_to_f32(krn_f32_to_bf16(3.140625f)), 3.140625f);
    ck_assert(isnan(krn_bf16_to_f32(krn_f32_to_bf16(NAN))));
    /* f16 round trip over a range, including subnormals */
    for (float v = -70000; v < 70000; v += 123.25f) {
        float r = krn_f16_to_f32(krn_f32_to_f16(v));
        if (fabsf(v) < 65504) ck_assert(fabsf(r - v) <= fabsf(v) * 1e-3f + 1e-7f);
    }
    ck_assert_float_eq(krn_f16_to_f32(0x0001), ldexpf(1, -24));
    /* f32 -> f16 is exact round-to-nearest-even: every half round-trips, and midpoints go to the even neighbour */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue; /* NaN payloads */
        ck_assert_uint_eq(krn_f32_to_f16(krn_f16_to_f32((uint16_t)h)), h);
        if ((h & 0x7fffu) < 0x7bffu) { /* the midpoint to the next half up rounds to whichever is even */
            float a = krn_f16_to_f32((uint16_t)h), b = krn_f16_to_f32((uint16_t)(h + 1));
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            ck_assert_uint_eq(krn_f32_to_f16((float)(((double)a + (double)b) / 2)), even);
        }
    }
    ck_assert_uint_eq(krn_f32_to_f16(1e6f), 0x7c00);  /* overflow: infinity */
    ck_assert_uint_eq(krn_f32_to_f16(1e-10f), 0x0000); /* underflow: zero */
    /* e4m3: every finite code decodes and re-encodes to itself */
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue;
        float v = krn_e4m3_to_f32((uint8_t)c);
        uint8_t back = krn_f32_to_e4m3(v);
        if (c == 0x80) ck_assert(back == 0x80 || back == 0); /* -0 */
        else ck_assert_msg(back == c, "code %#x -> %g -> %#x", c, v, back);
    }
    ck_assert_float_eq(krn_e4m3_to_f32(0x7e), 448.0f);
    ck_assert_uint_eq(krn_f32_to_e4m3(1e6f), 0x7e);        /* saturates */
    ck_assert_uint_eq(krn_f32_to_e4m3(-1e6f), 0xfe);
    ck_assert_uint_eq(krn_f32_to_e4m3(1.0625f), 0x38);     /* halfway 1.0/1.125 -> even (1.0) */
    ck_assert_uint_eq(krn_f32_to_e4m3(1.1875f), 0x3a);     /* halfway 1.125/1.25 -> even (1.25) */
}
END_TEST

/* y = x W^T in double, with W given as float rows */
void ref_linear(const float *x, const float *W, int m, int n, int k, double *y)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int c = 0; c < k; c++) s += (double)x[i * k + c] * W[(size_t)j * k + c];
            y[i * n + j] = s;
        }
}

START_TEST(test_linear_types)
{
    const int sizes[][3] = {{1, 37, 53}, {2, 65, 130}, {3, 129, 200}, {17, 70, 257}, {64, 3, 5}};
    for (size_t si = 0; si < PD_ARRAY_LEN(sizes); si++) {
        int m = sizes[si][0], n = sizes[si][1], k = sizes[si][2];
        float *x = malloc(sizeof(float) * m * k), *Wf = malloc(sizeof(float) * n * k),
              *Wd = malloc(sizeof(float) * n * k);
        krn_bf16 *Wb = malloc(2u * n * k);
        uint16_t *Wh = malloc(2u * n * k);
        uint8_t *W8 = malloc((size_t)n * k);
        int br = 32, bc = 48, sr = (n + br - 1) / br, sc = (k + bc - 1) / bc;
        float *scale = malloc(sizeof(float) * sr * sc);
        for (int i = 0; i < m * k; i++) x[i] = randn();
        for (int i = 0; i < n * k; i++) Wf[i] = randn() * 0.1f;
        for (int i = 0; i < sr * sc; i++) scale[i] = 0.001f * (1 + i % 7);
        float *y = malloc(sizeof(float) * m * (n + 3)), *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
        double *yr = malloc(sizeof(double) * m * n);
        for (int t = 0; t < 4; t++) {
            krn_mat w = {.type = (krn_type)t, .rows = n, .cols = k};
            for (int r = 0; r < n; r++)
                for (int c = 0; c < k; c++) {
                    size_t i = (size_t)r * k + c;
                    switch (t) {
                    case KRN_F32: Wd[i] = Wf[i]; break;
                    case KRN_BF16: Wb[i] = krn_f32_to_bf16(Wf[i]); Wd[i] = krn_bf16_to_f32(Wb[i]); break;
                    case KRN_F16: Wh[i] = krn_f32_to_f16(Wf[i]); Wd[i] = krn_f16_to_f32(Wh[i]); break;
                    default: {
                        float s = scale[(r / br) * sc + c / bc];
                        W8[i] = krn_f32_to_e4m3(Wf[i] / s);
                        Wd[i] = krn_e4m3_to_f32(W8[i]) * s;
                    }
                    }
                }
            w.data = t == KRN_F32 ? (void *)Wf : t == KRN_BF16 ? (void *)Wb : t == KRN_F16 ? (void *)Wh : (void *)W8;
            w.scale = scale;
            w.block_r = br;
            w.block_c = bc;
            ref_linear(x, Wd, m, n, k, yr);
            krn_linear(&w, x, m, y, n + 3, scratch); /* ldy wider than n */
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                    ck_assert_msg(fabs(y[i * (n + 3) + j] - yr[i * n + j]) < 1e-4 * (1 + fabs(yr[i * n + j])),
                                  "type %d m%d n%d k%d at %d,%d: %g vs %g", t, m, n, k, i, j, y[i * (n + 3) + j],
                                  yr[i * n + j]);
            /* band of rows against one vector */
            float yb[200];
            krn_linear_rows(&w, n / 3, n - n / 3, x, (size_t)k, 1, yb, 0);
            for (int j = n / 3; j < n; j++) ck_assert(fabs(yb[j - n / 3] - yr[j]) < 1e-4 * (1 + fabs(yr[j])));
            /* transposed sub-block: y[c] = sum_d x[d] W[r0+d, c0+c] */
            float ys[300];
            int r0 = 1, c0 = 2, kk = PD_MIN(5, n - 1), nn = k - 2;
            krn_matmul_sub(&w, r0, c0, x, (size_t)kk, 1, kk, nn, ys, (size_t)nn, 0);
            for (int c = 0; c < nn; c++) {
                double s = 0;
                for (int d = 0; d < kk; d++) s += (double)x[d] * Wd[(size_t)(r0 + d) * k + c0 + c];
                ck_assert(fabs(ys[c] - s) < 1e-4 * (1 + fabs(s)));
            }
        }
        free(x); free(Wf); free(Wd); free(Wb); free(Wh); free(W8); free(scale); free(y); free(scratch); free(yr);
    }
}
END_TEST

START_TEST(test_attention_tile_vs_naive)
{
    /* causal attention of nq queries (positions p0..) over nk keys, tiles of 5 keys */
    const int nq = 7, nh = 3, da = 6, db = 4, dv = 5, p0 = 11, nk = p0 + nq;
    float q[7][3][6], qb[7][3][4], k[18][3][6], kb[18][4], v[18][3][5];
    for (float *p = &q[0][0][0]; p < &q[0][0][0] + sizeof q / 4; p++) *p = randn();
    for (float *p = &qb[0][0][0]; p < &qb[0][0][0] + sizeof qb / 4; p++) *p = randn();
    for (float *p = &k[0][0][0]; p < &k[0][0][0] + sizeof k / 4; p++) *p = randn();
    for (float *p = &kb[0][0]; p < &kb[0][0] + sizeof kb / 4; p++) *p = randn();
    for (float *p = &v[0][0][0]; p < &v[0][0][0] + sizeof v / 4; p++) *p = randn();
    float m[21], l[21], acc[7][3][5], scores[5];
    int lim[7];
    for (int i = 0; i < nq; i++) lim[i] = p0 + i;
    krn_attn_init(nq, nh, dv, m, l, &acc[0][0][0], nh * dv, dv);
    for (int k0 = 0; k0 < nk; k0 += 5) {
        krn_attn_tile_args a = {.nq = nq, .nh = nh, .nk = PD_MIN(5, nk - k0), .da = da, .db = db, .dv = dv,
                                .qa = &q[0][0][0], .qa_stride = nh * da, .qa_hstride = da,
                                .qb = &qb[0][0][0], .qb_stride = nh * db, .qb_hstride = db,
                                .ka = &k[k0][0][0], .ka_stride = nh * da, .ka_hstride = da,
                                .kb = &kb[k0][0], .kb_stride = db,
                                .v = &v[k0][0][0], .v_stride = nh * dv, .v_hstride = dv,
                                .q_limit = lim, .k_pos0 = k0, .scale = 0.3f, .m = m, .l = l,
                                .acc = &acc[0][0][0], .acc_stride = nh * dv, .acc_hstride = dv, .scores = scores};
        krn_attn_tile(&a);
    }
    krn_attn_finish(nq, nh, dv, l, &acc[0][0][0], nh * dv, dv);
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < nh; h++) {
            double s[18], mx = -1e30, sum = 0;
            for (int j = 0; j <= lim[i]; j++) {
                double d = 0;
                for (int c = 0; c < da; c++) d += q[i][h][c] * k[j][h][c];
                for (int c = 0; c < db; c++) d += qb[i][h][c] * kb[j][c];
                s[j] = d * 0.3;
                mx = fmax(mx, s[j]);
            }
            for (int j = 0; j <= lim[i]; j++) sum += (s[j] = exp(s[j] - mx));
            for (int c = 0; c < dv; c++) {
                double o = 0;
                for (int j = 0; j <= lim[i]; j++) o += s[j] / sum * v[j][h][c];
                ck_assert_msg(fabs(o - acc[i][h][c]) < 1e-5, "q%d h%d c%d: %g vs %g", i, h, c, acc[i][h][c], o);
            }
        }
}
END_TEST

/* krn_argmax against the one-scan definition: ties (first wins), NaN (never chosen; at index 0 it gives 0),
 * signed zeros, lengths around the 16-lane blocks. */
START_TEST(test_argmax)
{
    for (int n = 1; n <= 70; n++)
        for (int trial = 0; trial < 40; trial++) {
            float v[70];
            for (int i = 0; i < n; i++) {
                int r = (int)(pd_rng_next(&g_kernels_rng) % 10);
                v[i] = r < 4                 ? (float)(r - 2) :
                    r == 4                   ? -0.0f :
                    r == 5                   ? 0.0f :
                    r == 6 && trial % 3 == 0 ? NAN :
                                               randn();
            }
            int best = 0;
            for (int i = 1; i < n; i++)
                if (v[i] > v[best]) best = i;
            ck_assert_int_eq(krn_argmax(v, n), best);
        }
}
END_TEST

START_TEST(test_sampler)
{
    const int V = 50;
    krn_sampler s;
    ck_assert_int_eq(krn_sampler_create(V, &s), PD_OK);
    float base[50], lg[50], probs[50];
    for (int i = 0; i < V; i++) base[i] = randn();
    base[17] = 3.0f;
    pd_rng r1, r2;
    krn_sampling_params p = krn_sampling_defaults();
    /* greedy */
    p.temperature = 0;
    memcpy(lg, base, sizeof lg);
    ck_assert_int_eq(krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, NULL), 17);
    /* same seed, same draws; top_k = 1 is greedy */
    p.temperature = 1.0f;
    pd_rng_seed(&r1, 5);
    pd_rng_seed(&r2, 5);
    for (int i = 0; i < 50; i++) {
        memcpy(lg, base, sizeof lg);
        int a = krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, NULL);
        memcpy(lg, base, sizeof lg);
        ck_assert_int_eq(a, krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r2, NULL, NULL));
    }
    p.top_k = 1;
    memcpy(lg, base, sizeof lg);
    ck_assert_int_eq(krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, NULL), 17);
    /* top-k: only the k best ever come out; probabilities renormalised over them */
    p.top_k = 3;
    int order[50];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (base[order[j]] > base[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    for (int it = 0; it < 200; it++) {
        memcpy(lg, base, sizeof lg);
        int a = krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, probs);
        ck_assert(a == order[0] || a == order[1] || a == order[2]);
    }
    ck_assert_float_eq_tol(probs[order[0]] + probs[order[1]] + probs[order[2]], 1.0f, 1e-5);
    /* top-p tiny: only the best; min-p 1: only the best */
    p.top_k = 0;
    p.top_p = 1e-4f;
    memcpy(lg, base, sizeof lg);
    ck_assert_int_eq(krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, NULL), 17);
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    memcpy(lg, base, sizeof lg);
    ck_assert_int_eq(krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, NULL), 17);
    p.min_p = 0;
    /* distribution at temperature 0.7 matches softmax(logits / 0.7) (chi-square, 9 bins) */
    p.temperature = 0.7f;
    const int N = 40000;
    int counts[50] = {0};
    for (int it = 0; it < N; it++) {
        memcpy(lg, base, sizeof lg);
        counts[krn_sample(s, lg, &p, NULL, 0, NULL, 0, &r1, NULL, NULL)]++;
    }
    double ex[50], mx = -1e30, sum = 0, chi = 0;
    for (int i = 0; i < V; i++) mx = fmax(mx, base[i] / 0.7);
    for (int i = 0; i < V; i++) sum += (ex[i] = exp(base[i] / 0.7 - mx));
    double rest_e = 0, rest_o = 0;
    int bins = 0;
    for (int j = 0; j < V; j++) {
        int i = order[j];
        double e = ex[i] / sum * N;
        if (j < 8) { chi += (counts[i] - e) * (counts[i] - e) / e; bins++; }
        else { rest_e += e; rest_o += counts[i]; }
    }
    chi += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
    ck_assert_msg(chi < 27.9, "chi-square %.1f over %d bins", chi, bins + 1); /* p = 0.0005 at 8 dof */
    /* penalties: presence pushes a repeated token down; repetition divides positive logits */
    p.temperature = 0;
    int32_t out[3] = {17, 17, 4};
    memcpy(lg, base, sizeof lg);
    p.presence_penalty = 10.0f;
    ck_assert_int_ne(krn_sample(s, lg, &p, NULL, 0, out, 3, &r1, NULL, NULL), 17);
    ck_assert_float_eq_tol(lg[17], base[17] - 10.0f, 1e-6);
    p.presence_penalty = 0;
    p.frequency_penalty = 0.5f;
    memcpy(lg, base, sizeof lg);
    krn_sample(s, lg, &p, NULL, 0, out, 3, &r1, NULL, NULL);
    ck_assert_float_eq_tol(lg[17], base[17] - 1.0f, 1e-6);
    ck_assert_float_eq_tol(lg[4], base[4] - 0.5f, 1e-6);
    p.frequency_penalty = 0;
    p.repetition_penalty = 2.0f;
    int32_t prompt[2] = {17, 9};
    memcpy(lg, base, sizeof lg);
    krn_sample(s, lg, &p, prompt, 2, out, 3, &r1, NULL, NULL);
    ck_assert_float_eq_tol(lg[17], base[17] / 2, 1e-6);
    ck_assert_float_eq_tol(lg[9], base[9] > 0 ? base[9] / 2 : base[9] * 2, 1e-6);
    ck_assert_float_eq_tol(lg[4], base[4] > 0 ? base[4] / 2 : base[4] * 2, 1e-6);
    ck_assert_float_eq(lg[5], base[5]);
    /* scratch is clean afterwards: the same call again gives the same result */
    memcpy(lg, base, sizeof lg);
    krn_sample(s, lg, &p, prompt, 2, out, 3, &r1, NULL, NULL);
    ck_assert_float_eq_tol(lg[17], base[17] / 2, 1e-6);
    krn_sampler_destroy(s);
    krn_sampler_destroy(NULL);
}
END_TEST

int main(void)
{
    pd_rng_seed(&g_kernels_rng, 1234);
    Suite *s = suite_create("kernels");
    PD_CHECK_CASE(s, "ref", 0, test_formats, test_linear_types, test_attention_tile_vs_naive, test_sampler,
                  test_argmax);
    test_kernels_paths_case(s);
    int failed = pd_check_run(s, 0);
    return failed ? 1 : 0;
}
